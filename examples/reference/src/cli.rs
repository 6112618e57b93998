//! The command line the examples share, parsed with clap: the common flags are derived
//! ([`CommonFlags`]); each example adds flags of its own and its steps at run time ([`Cli`]).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Arg, ArgMatches, FromArgMatches as _};

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

/// The flags every example takes, as clap derives them; [`Cli`] completes them with the
/// example's name, steps and own flags, and the environment's defaults.
#[derive(Debug, clap::Args)]
struct CommonFlags {
    /// Store and recorded setup [default: ./<example>-data].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// The AWS API emulator [default: $SAGA_AWS_ENDPOINT].
    #[arg(long = "aws-endpoint", value_name = "URL")]
    aws_endpoint: Option<String>,
    /// An image registry, repeatable, in order of preference [default: $SAGA_REGISTRIES
    /// (comma-separated), else $SAGA_TEST_REGISTRY_A and _B].
    #[arg(long = "registry", value_name = "HOST:PORT")]
    registries: Vec<String>,
    /// The image in the registries [default: $SAGA_IMAGE, else $SAGA_TEST_IMAGE, else
    /// saga-test/httpd:1].
    #[arg(long, value_name = "PATH:TAG")]
    image: Option<String>,
    /// Names the containers and emulator resources: 1 to 20 letters, digits and dashes
    /// [default: the example's name].
    #[arg(long, value_name = "NAME")]
    app: Option<String>,
    /// The step fails permanently before its effect.
    #[arg(long = "fail-at", value_name = "STEP")]
    fail_at: Option<String>,
    /// Abort the process after the step's effect (first attempt); run again to resume.
    #[arg(long = "crash-at", value_name = "STEP")]
    crash_at: Option<String>,
    /// Cancel the Operation MS milliseconds after it starts.
    #[arg(long = "cancel-after", value_name = "MS")]
    cancel_after: Option<u64>,
    /// Remove the example's containers and stop (also as the word `cleanup`).
    #[arg(long)]
    cleanup: bool,
    /// `cleanup`: the same as --cleanup.
    #[arg(value_name = "cleanup", value_parser = ["cleanup"], hide = true)]
    word: Option<String>,
}

impl Cli {
    /// The command line of example `name`, which does `about`, with these steps in order.
    pub fn new(name: &'static str, about: &'static str, steps: &[&str]) -> Self {
        Cli { name, about, steps: steps.iter().map(|s| s.to_string()).collect(), extra: Vec::new() }
    }

    /// Adds a flag of the example's own (`flag` is `--name`), taking a value (named `value` in
    /// the help), described by `help`.
    pub fn flag(mut self, flag: &'static str, value: &'static str, help: &'static str) -> Self {
        self.extra.push((flag, value, help));
        self
    }

    /// The clap command: the common flags, the steps' names checked, the example's own flags.
    fn command(&self) -> clap::Command {
        let steps = self.steps.clone();
        let step = move |name: &str| -> Result<String, String> {
            if steps.iter().any(|s| s == name) {
                Ok(name.to_owned())
            } else {
                Err(format!("unknown step {name:?}; the steps are {}", steps.join(", ")))
            }
        };
        let mut command = <CommonFlags as clap::Args>::augment_args(clap::Command::new(self.name))
            .about(self.about)
            .override_usage(format!(
                "cargo run -p saga-reference --example {} -- [FLAGS]",
                self.name
            ))
            .after_help(format!("steps, in order: {}", self.steps.join(", ")))
            .mut_arg("fail_at", |arg| arg.value_parser(step.clone()))
            .mut_arg("crash_at", |arg| arg.value_parser(step));
        for (flag, value, help) in &self.extra {
            let long = flag.trim_start_matches('-');
            command = command.arg(Arg::new(*flag).long(long).value_name(*value).help(*help));
        }
        command
    }

    /// The help text, listing the flags and the steps.
    pub fn usage(&self) -> String {
        self.command().render_help().to_string()
    }

    /// Parses the arguments (without the program name) and the environment. `Ok(None)` means
    /// `--help`, whose text this prints.
    pub fn parse<I>(&self, args: I) -> Result<Option<Args>, String>
    where
        I: IntoIterator,
        I::Item: Into<OsString>,
    {
        let program = std::iter::once(OsString::from(self.name));
        let matches = match self
            .command()
            .try_get_matches_from(program.chain(args.into_iter().map(Into::into)))
        {
            Ok(matches) => matches,
            Err(e) if !e.use_stderr() => {
                crate::say(e.to_string().trim_end());
                return Ok(None);
            }
            Err(e) => {
                let text = e.to_string();
                return Err(text.strip_prefix("error: ").unwrap_or(&text).trim_end().to_owned());
            }
        };
        let flags = CommonFlags::from_arg_matches(&matches).map_err(|e| e.to_string())?;
        self.args(flags, &matches).map(Some)
    }

    /// The flags with the environment's defaults, checked.
    fn args(&self, flags: CommonFlags, matches: &ArgMatches) -> Result<Args, String> {
        let registries = if flags.registries.is_empty() {
            let mut from_env: Vec<String> = match env("SAGA_REGISTRIES") {
                Some(list) => list.split(',').map(|r| r.trim().to_owned()).collect(),
                None => ["SAGA_TEST_REGISTRY_A", "SAGA_TEST_REGISTRY_B"]
                    .iter()
                    .filter_map(|n| env(n))
                    .collect(),
            };
            from_env.retain(|r| !r.is_empty());
            from_env
        } else {
            flags.registries
        };
        let extra = self
            .extra
            .iter()
            .filter_map(|(flag, _, _)| {
                let value = matches.get_one::<String>(flag)?;
                Some(((*flag).to_owned(), value.clone()))
            })
            .collect();
        let args = Args {
            data: flags.data.unwrap_or_else(|| PathBuf::from(format!("{}-data", self.name))),
            aws_endpoint: flags
                .aws_endpoint
                .or_else(|| env("SAGA_AWS_ENDPOINT"))
                .unwrap_or_default(),
            registries,
            image: flags
                .image
                .or_else(|| env("SAGA_IMAGE"))
                .or_else(|| env("SAGA_TEST_IMAGE"))
                .unwrap_or_else(|| "saga-test/httpd:1".into()),
            app: flags.app.unwrap_or_else(|| self.name.replace('_', "-")),
            fail_at: flags.fail_at,
            crash_at: flags.crash_at,
            cancel_after: flags.cancel_after,
            cleanup: flags.cleanup || flags.word.is_some(),
            extra,
        };
        let app = &args.app;
        if app.is_empty()
            || app.len() > 20
            || !app.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            || app.starts_with('-')
        {
            return Err(format!("--app {app:?}: use 1 to 20 letters, digits and dashes"));
        }
        if !args.cleanup {
            if args.aws_endpoint.is_empty() {
                return Err("no AWS endpoint: pass --aws-endpoint URL or set SAGA_AWS_ENDPOINT \
                            (bash scripts/services/moto.sh start prints one)"
                    .into());
            }
            if args.registries.is_empty() {
                return Err("no registry: pass --registry HOST:PORT or set SAGA_REGISTRIES \
                            (bash scripts/services/registry.sh start starts two)"
                    .into());
            }
        }
        Ok(args)
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

    #[test]
    fn cleanup_is_a_flag_and_a_word_and_help_lists_the_steps() {
        let cli = Cli::new("demo", "demo", &["a", "b"]).flag("--drain-ms", "MS", "drain");
        for list in [&["--cleanup"][..], &["cleanup"][..]] {
            let parsed = cli.parse(args(list)).expect("parses").expect("not --help");
            assert!(parsed.cleanup, "{list:?}");
        }
        let usage = cli.usage();
        assert!(usage.contains("steps, in order: a, b"), "{usage}");
        assert!(usage.contains("--drain-ms <MS>"), "{usage}");
        let error = cli.parse(args(&["--cleanup", "--nope"])).err().unwrap_or_default();
        assert!(error.contains("--nope"), "{error}");
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::new("demo", "demo", &["a"]).flag("--grow-by", "GIB", "grow").command().debug_assert();
    }
}
