#!/usr/bin/env python3
"""A token server for the test registry with token auth (docker's token
protocol, as Docker Hub and Harbor speak it), standard library only.

    token-server.py --port PORT --key DIR/token.key --cert DIR/token.pem \
        --service kiln-test-token --issuer kiln-test-issuer --credentials USER:PASSWORD

GET /token?service=S&scope=repository:NAME:ACTIONS[&scope=...][&account=USER]
  - Basic auth matching --credentials: a token granting every requested scope
  - no Authorization header: a token with empty access (anonymous)
  - anything else: 401

Tokens are RS256 JWTs signed with `openssl dgst -sha256 -sign KEY`; their
header carries the certificate (x5c) that the registry checks against its
rootcertbundle.
"""

import argparse
import base64
import json
import os
import ssl
import subprocess
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(key: str, data: bytes) -> bytes:
    return subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", key],
        input=data,
        stdout=subprocess.PIPE,
        check=True,
    ).stdout


def parse_scope(scope: str):
    # repository:NAME:ACTIONS (NAME has no ':'; ACTIONS comma-separated)
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if not kind or not name:
        return None
    return {"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--credentials", required=True)
    args = parser.parse_args()

    with open(args.cert) as f:
        der = ssl.PEM_cert_to_DER_cert(f.read())
    header = b64url(
        json.dumps({"alg": "RS256", "typ": "JWT", "x5c": [base64.b64encode(der).decode()]}).encode()
    )
    expected = "Basic " + base64.b64encode(args.credentials.encode()).decode()
    user = args.credentials.split(":", 1)[0]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *a):  # one line per request on stderr, no secrets
            sys.stderr.write("token-server: %s %s\n" % (self.command, urlparse(self.path).path))

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            url = urlparse(self.path)
            if url.path != "/token":
                return self.reply(404, {"errors": [{"code": "NOT_FOUND"}]})
            query = parse_qs(url.query)
            authorization = self.headers.get("Authorization")
            if authorization is None:
                subject, access = "", []
            elif authorization == expected:
                subject = user
                access = [s for s in (parse_scope(x) for x in query.get("scope", [])) if s]
            else:
                return self.reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
            now = int(time.time())
            claims = {
                "iss": args.issuer,
                "sub": subject,
                "aud": query.get("service", [args.service])[0],
                "exp": now + 300,
                "nbf": now - 10,
                "iat": now,
                "jti": uuid.uuid4().hex,
                "access": access,
            }
            payload = header + "." + b64url(json.dumps(claims).encode())
            token = payload + "." + b64url(sign(args.key, payload.encode()))
            self.reply(200, {"token": token, "access_token": token, "expires_in": 300,
                             "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))})

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    sys.stderr.write("token-server: listening on 127.0.0.1:%d (pid %d)\n" % (args.port, os.getpid()))
    server.serve_forever()


if __name__ == "__main__":
    main()
