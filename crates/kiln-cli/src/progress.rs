//! The CLI's [`kiln::Progress`]: per-blob bars on a terminal, plain lines
//! otherwise, nothing with `-q`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln::{ConvertStage, Event, Progress};

use crate::printer::{size, status};

/// How progress is shown.
pub enum Reporter {
    /// Nothing at all.
    Quiet,
    /// One line per milestone.
    Lines,
    /// Bars on a terminal.
    Bars {
        multi: MultiProgress,
        bars: Mutex<HashMap<String, ProgressBar>>,
    },
}

impl Reporter {
    /// Chooses by `-q` and whether stderr is a terminal.
    pub fn new(quiet: bool) -> Reporter {
        if quiet {
            Reporter::Quiet
        } else if crate::printer::stderr_is_terminal() {
            Reporter::Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                bars: Mutex::new(HashMap::new()),
            }
        } else {
            Reporter::Lines
        }
    }

    fn line(&self, text: String) {
        match self {
            Reporter::Quiet => {}
            Reporter::Lines => status(text),
            Reporter::Bars { multi, .. } => {
                let _ = multi.println(text);
            }
        }
    }

    fn bar(&self, key: String, label: String, size: u64, offset: u64) {
        if let Reporter::Bars { multi, bars } = self {
            let bar = multi.add(ProgressBar::new(size));
            // A size not known ahead (0): how far, without a bar.
            let template = if size == 0 {
                "{prefix} {spinner} {decimal_bytes:>10} {decimal_bytes_per_sec:>12} {msg}"
            } else {
                "{prefix} {bar:30} {decimal_bytes:>10}/{decimal_total_bytes:<10} {decimal_bytes_per_sec:>12} {msg}"
            };
            let style = ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(label);
            bar.set_position(offset);
            bars.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, bar);
        }
    }
}

impl Reporter {
    /// Moves the bar `key` (bars only).
    fn advance(&self, key: &str, position: u64) {
        if let Reporter::Bars { bars, .. } = self
            && let Some(bar) = bars.lock().unwrap_or_else(|p| p.into_inner()).get(key)
        {
            bar.set_position(position);
        }
    }

    /// Finishes the bar `key` with `message`, or prints `line` without bars.
    fn finish(&self, key: &str, message: &'static str, line: String) {
        if let Reporter::Bars { bars, .. } = self {
            if let Some(bar) = bars.lock().unwrap_or_else(|p| p.into_inner()).get(key) {
                bar.finish_with_message(message);
            }
        } else {
            self.line(line);
        }
    }

    /// Starts a bar for `key`, or prints `line` without bars.
    fn start(&self, key: String, label: String, total: u64, offset: u64, line: String) {
        if let Reporter::Bars { .. } = self {
            self.bar(key, label, total, offset);
        } else {
            self.line(line);
        }
    }
}

impl Progress for Reporter {
    fn event(&self, event: Event) {
        match event {
            Event::Resolving { reference } => self.line(format!("resolving {reference}")),
            Event::Cached { manifest } => {
                self.line(format!("{} is up to date in the store", manifest))
            }
            Event::Resolved {
                manifest,
                platform,
                layers,
            } => {
                let platform = if platform.is_empty() {
                    String::new()
                } else {
                    format!(" for {platform}")
                };
                self.line(format!("manifest {manifest}{platform}: {layers} layers"))
            }
            Event::BlobStarted {
                digest,
                size: total,
                offset,
            } => {
                let line = if offset > 0 {
                    format!(
                        "{}: resuming at {} of {}",
                        digest.short(),
                        size(offset),
                        size(total)
                    )
                } else {
                    format!("{}: downloading {}", digest.short(), size(total))
                };
                self.start(
                    digest.to_string(),
                    digest.short().to_string(),
                    total,
                    offset,
                    line,
                );
            }
            Event::BlobProgress { digest, position } => self.advance(&digest.to_string(), position),
            Event::BlobExists {
                digest,
                size: total,
            } => self.line(format!(
                "{}: already in the store ({})",
                digest.short(),
                size(total)
            )),
            Event::BlobDone {
                digest,
                size: total,
            } => self.finish(
                &digest.to_string(),
                "done",
                format!("{}: done ({})", digest.short(), size(total)),
            ),
            Event::Retrying {
                what,
                attempt,
                delay,
                reason,
            } => self.line(format!(
                "retrying {what} (attempt {attempt} in {}): {reason}",
                human_delay(delay)
            )),
            Event::Stored { manifest } => self.line(format!("stored {manifest}")),
            Event::Warning { message } => self.line(format!("warning: {message}")),
            Event::UploadStarted {
                digest,
                size: total,
            } => self.start(
                digest.to_string(),
                digest.short().to_string(),
                total,
                0,
                format!("{}: uploading {}", digest.short(), size(total)),
            ),
            Event::UploadProgress { digest, position } => {
                self.advance(&digest.to_string(), position)
            }
            Event::UploadDone {
                digest,
                size: total,
            } => self.finish(
                &digest.to_string(),
                "pushed",
                format!("{}: pushed ({})", digest.short(), size(total)),
            ),
            Event::BlobOnRegistry {
                digest,
                size: total,
                mounted_from,
            } => match mounted_from {
                Some(from) => self.line(format!(
                    "{}: mounted from {from} ({})",
                    digest.short(),
                    size(total)
                )),
                None => self.line(format!(
                    "{}: already on the registry ({})",
                    digest.short(),
                    size(total)
                )),
            },
            Event::ManifestPushed { reference, digest } => {
                self.line(format!("manifest {digest} pushed to {reference}"))
            }
            Event::FileStarted { name, size: total } => {
                let line = format!(
                    "{name}: downloading {}",
                    total.map(size).unwrap_or_else(|| "?".into())
                );
                self.start(name.clone(), name, total.unwrap_or(0), 0, line);
            }
            Event::FileProgress { name, position } => self.advance(&name, position),
            Event::ConvertStarted { stage, total } => {
                let (key, label) = stage_names(stage);
                let line = match total {
                    0 => format!("{label}: {}", stage_doing(stage)),
                    _ => format!("{label}: {} {}", stage_doing(stage), size(total)),
                };
                // One line without bars: the command's own line ends it.
                self.start(key, label, total, 0, line);
            }
            Event::ConvertProgress { stage, done } => self.advance(&stage_names(stage).0, done),
            Event::ConvertDone { stage, total } => {
                let key = stage_names(stage).0;
                self.advance(&key, total);
                if let Reporter::Bars { .. } = self {
                    self.finish(&key, "done", String::new());
                }
            }
            Event::ArchiveEntry { name, size: total } => {
                self.line(format!("{name} ({})", size(total)))
            }
            Event::FileExists { name, size: total } => {
                self.line(format!("{name}: already in the store ({})", size(total)))
            }
            Event::FileDone { name, size: total } => {
                let line = format!("{name}: verified ({})", size(total));
                self.finish(&name, "verified", line)
            }
        }
    }
}

/// A conversion stage's bar key and label.
fn stage_names(stage: ConvertStage) -> (String, String) {
    let label = match stage {
        ConvertStage::Layers => "layers".to_string(),
        ConvertStage::Image(format) => format.as_str().to_string(),
        ConvertStage::LayerFile(index) => format!("layer {index}"),
    };
    (format!("convert {label}"), label)
}

fn stage_doing(stage: ConvertStage) -> &'static str {
    match stage {
        ConvertStage::Layers => "reading",
        ConvertStage::Image(_) | ConvertStage::LayerFile(_) => "writing",
    }
}

fn human_delay(delay: Duration) -> String {
    if delay < Duration::from_secs(1) {
        format!("{}ms", delay.as_millis())
    } else {
        format!("{:.1}s", delay.as_secs_f64())
    }
}
