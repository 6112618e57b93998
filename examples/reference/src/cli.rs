//! The command line the examples share, parsed by hand to need no dependency.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// An example's command line: its name, what it does, its steps and its own flags.
#[derive(Debug, Clone)]
pub struct Cli {
    name: &'static str,
    about: &'static str,
    steps: Vec<String>,
    extra: Vec<(&'static str, &'static str, &'static str)>,
}

/// The parsed flags.
#[derive(Debug, Clone)]
pub struct Args {
    /// `--data DIR`: the sled store (`DIR/store`), the recorded setup and the example's files.
    pub data: PathBuf,
    /// `--aws-endpoint URL`, else `SAGA_AWS_ENDPOINT`: the AWS API emulator.
    pub aws_endpoint: String,
    /// `--registry HOST:PORT` (repeatable, in order of preference), else `SAGA_REGISTRIES`
    /// (comma-separated), else `SAGA_TEST_REGISTRY_A` and `SAGA_TEST_REGISTRY_B`.
    pub registries: Vec<String>,
    /// `--image PATH:TAG` inside the registries, else `SAGA_IMAGE`, else `SAGA_TEST_IMAGE`, else
    /// `saga-test/httpd:1`.
    pub image: String,
    /// `--app NAME`: names the containers and the emulator's resources. Default: the example's.
    pub app: String,
    /// `--fail-at STEP`: the step fails permanently, before its effect.
    pub fail_at: Option<String>,
    /// `--crash-at STEP`: the process aborts after the step's effect, on its first attempt.
    pub crash_at: Option<String>,
    /// `--cancel-after MS`: the Operation is cancelled this long after it started.
    pub cancel_after: Option<u64>,
    /// `--cleanup`: remove the example's containers instead of running.
    pub cleanup: bool,
    /// The example's own flags, by name (`--drain-ms` -> value).
    pub extra: BTreeMap<String, String>,
}

impl Cli {
    /// The command line of example `name`, which does `about`, with these steps in order.
    pub fn new(name: &'static str, about: &'static str, steps: &[&str]) -> Self {
        Cli { name, about, steps: steps.iter().map(|s| s.to_string()).collect(), extra: Vec::new() }
    }

    /// Adds a flag of the example's own, taking a value (named `value` in the help), described
    /// by `help`.
    pub fn flag(mut self, flag: &'static str, value: &'static str, help: &'static str) -> Self {
        self.extra.push((flag, value, help));
        self
    }

    /// The help text, listing the steps.
    pub fn usage(&self) -> String {
        let mut text = format!(
            "{name}: {about}\n\nusage: cargo run -p saga-reference --example {name} -- [FLAGS]\n\n\
             flags:\n  \
             --data DIR          store and recorded setup (default ./{name}-data)\n  \
             --aws-endpoint URL  the AWS API emulator (default: $SAGA_AWS_ENDPOINT)\n  \
             --registry H:P      an image registry, repeatable, in order of preference\n                      \
             (default: $SAGA_REGISTRIES, else $SAGA_TEST_REGISTRY_A and _B)\n  \
             --image PATH:TAG    the image in the registries (default: $SAGA_IMAGE, else\n                      \
             $SAGA_TEST_IMAGE, else saga-test/httpd:1)\n  \
             --app NAME          names the containers and emulator resources (default {name})\n  \
             --fail-at STEP      the step fails permanently before its effect\n  \
             --crash-at STEP     abort the process after the step's effect (first attempt);\n                      \
             run again to resume\n  \
             --cancel-after MS   cancel the Operation MS milliseconds after it starts\n  \
             --cleanup           remove the example's containers and stop\n",
            name = self.name,
            about = self.about,
        );
        for (flag, value, help) in &self.extra {
            text.push_str(&format!("  {:<19} {help}\n", format!("{flag} {value}")));
        }
        text.push_str(&format!("\nsteps, in order: {}", self.steps.join(", ")));
        text
    }

    /// Parses the arguments (without the program name) and the environment. `Ok(None)` means
    /// `--help`, whose text this prints.
    pub fn parse(&self, args: impl IntoIterator<Item = String>) -> Result<Option<Args>, String> {
        let mut parsed = Args {
            data: PathBuf::from(format!("{}-data", self.name)),
            aws_endpoint: env("SAGA_AWS_ENDPOINT").unwrap_or_default(),
            registries: Vec::new(),
            image: env("SAGA_IMAGE")
                .or_else(|| env("SAGA_TEST_IMAGE"))
                .unwrap_or_else(|| "saga-test/httpd:1".into()),
            app: self.name.replace('_', "-"),
            fail_at: None,
            crash_at: None,
            cancel_after: None,
            cleanup: false,
            extra: BTreeMap::new(),
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
            match arg.as_str() {
                "-h" | "--help" => {
                    crate::say(&self.usage());
                    return Ok(None);
                }
                "--data" => parsed.data = PathBuf::from(value("--data")?),
                "--aws-endpoint" => parsed.aws_endpoint = value("--aws-endpoint")?,
                "--registry" => parsed.registries.push(value("--registry")?),
                "--image" => parsed.image = value("--image")?,
                "--app" => parsed.app = value("--app")?,
                "--fail-at" => parsed.fail_at = Some(self.step(value("--fail-at")?)?),
                "--crash-at" => parsed.crash_at = Some(self.step(value("--crash-at")?)?),
                "--cancel-after" => {
                    let text = value("--cancel-after")?;
                    let ms = text
                        .parse()
                        .map_err(|_| format!("--cancel-after takes milliseconds, not {text:?}"))?;
                    parsed.cancel_after = Some(ms);
                }
                "--cleanup" | "cleanup" => parsed.cleanup = true,
                flag if self.extra.iter().any(|(f, _, _)| *f == flag) => {
                    let v = value(flag)?;
                    parsed.extra.insert(flag.to_owned(), v);
                }
                other => return Err(format!("unknown argument {other:?}\n\n{}", self.usage())),
            }
        }
        if parsed.registries.is_empty() {
            parsed.registries = match env("SAGA_REGISTRIES") {
                Some(list) => list.split(',').map(|r| r.trim().to_owned()).collect(),
                None => ["SAGA_TEST_REGISTRY_A", "SAGA_TEST_REGISTRY_B"]
                    .iter()
                    .filter_map(|n| env(n))
                    .collect(),
            };
            parsed.registries.retain(|r| !r.is_empty());
        }
        let app = &parsed.app;
        if app.is_empty()
            || app.len() > 20
            || !app.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            || app.starts_with('-')
        {
            return Err(format!("--app {app:?}: use 1 to 20 letters, digits and dashes"));
        }
        if !parsed.cleanup {
            if parsed.aws_endpoint.is_empty() {
                return Err("no AWS endpoint: pass --aws-endpoint URL or set SAGA_AWS_ENDPOINT \
                            (bash scripts/services/moto.sh start prints one)"
                    .into());
            }
            if parsed.registries.is_empty() {
                return Err("no registry: pass --registry HOST:PORT or set SAGA_REGISTRIES \
                            (bash scripts/services/registry.sh start starts two)"
                    .into());
            }
        }
        Ok(Some(parsed))
    }

    fn step(&self, name: String) -> Result<String, String> {
        if self.steps.contains(&name) {
            Ok(name)
        } else {
            Err(format!("unknown step {name:?}; the steps are {}", self.steps.join(", ")))
        }
    }
}

impl Args {
    /// The value of the example's own flag `flag` as a number, or `default`.
    pub fn number(&self, flag: &str, default: u64) -> Result<u64, String> {
        match self.extra.get(flag) {
            None => Ok(default),
            Some(text) => {
                text.parse().map_err(|_| format!("{flag} takes a whole number, not {text:?}"))
            }
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_flags_and_rejects_unknown_steps() {
        let cli = Cli::new("demo", "demo", &["a", "b"]).flag("--drain-ms", "MS", "drain");
        let parsed = cli
            .parse(args(&[
                "--aws-endpoint",
                "http://127.0.0.1:1",
                "--registry",
                "127.0.0.1:2",
                "--fail-at",
                "b",
                "--drain-ms",
                "5",
            ]))
            .expect("the flags parse")
            .expect("not --help");
        assert_eq!(parsed.fail_at.as_deref(), Some("b"));
        assert_eq!(parsed.number("--drain-ms", 1), Ok(5));
        let error = cli.parse(args(&["--fail-at", "zz"])).err().unwrap_or_default();
        assert!(error.contains("unknown step \"zz\""), "{error}");
    }
}
