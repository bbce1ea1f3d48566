//! Server settings, one schema in three spellings: every flag `--foo-bar` of a server is also the
//! environment variable `DUET_FOO_BAR` and the key `foo_bar` of its TOML configuration file
//! (`--config FILE` or `DUET_CONFIG`). A flag beats the environment, the environment beats the
//! file, and the file beats the built-in default, so a file can hold a site's settings while a
//! container platform overrides a few through the environment.
//!
//! The schema is the server's clap definition itself, so `--help`, the environment and the file
//! can never drift apart, and a bad value in the file gets the same check as on the command line.

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};
use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Arguments that are not settings: they say where settings come from or what to do with them.
const NOT_SETTINGS: &[&str] = &["help", "version", "config", "check-config"];

/// Why the settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A bad flag or environment value, or `--help`: clap's own message and exit code.
    #[error("{0}")]
    Usage(#[from] clap::Error),
    #[error("configuration file {path}: {message}")]
    File { path: String, message: String },
}

impl ConfigError {
    /// Prints the error the way a person at a terminal expects and exits: 0 for `--help` and
    /// `--version`, 2 for bad usage (clap's convention), 1 for a bad configuration file.
    pub fn exit(self, program: &str) -> ! {
        match self {
            ConfigError::Usage(e) => e.exit(),
            e @ ConfigError::File { .. } => {
                eprintln!("{program}: {e}");
                std::process::exit(1)
            }
        }
    }
}

/// Where a setting's value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Flag,
    Environment,
    File,
    Default,
}

/// Parsed settings, with what is needed to tell where each value came from.
pub struct Settings<C> {
    pub cli: C,
    command: Command,
    matches: ArgMatches,
    file: Option<PathBuf>,
    from_file: HashSet<String>,
}

/// The environment variable of a flag: `--max-job-size` is `DUET_MAX_JOB_SIZE`.
pub fn env_name(long: &str) -> String {
    format!("DUET_{}", long.replace('-', "_").to_ascii_uppercase())
}

/// Gives every setting of `command` its environment variable, unless the definition names one
/// already. A subcommand's arguments get one only if they are settings of the server too (the
/// `database` of `migrate`): the others are not part of the schema.
fn with_env_names(command: Command) -> Command {
    let add_env = |arg: clap::Arg| {
        let long = arg.get_long().map(str::to_string);
        match long {
            Some(long) if arg.get_env().is_none() && !NOT_SETTINGS.contains(&long.as_str()) => arg.env(env_name(&long)),
            _ => arg,
        }
    };
    let command = command.mut_args(add_env);
    let top: HashSet<String> =
        command.get_arguments().filter(|a| is_setting(a)).filter_map(|a| a.get_long()).map(str::to_string).collect();
    let names: Vec<String> = command.get_subcommands().map(|s| s.get_name().to_string()).collect();
    names.into_iter().fold(command, |c, name| {
        c.mut_subcommand(name, |sub| {
            sub.mut_args(|arg| match arg.get_long() {
                Some(long) if top.contains(long) => add_env(arg),
                _ => arg,
            })
        })
    })
}

fn is_setting(arg: &clap::Arg) -> bool {
    arg.get_long().is_some_and(|l| !NOT_SETTINGS.contains(&l))
}

/// Loads the settings from the process's arguments, environment and configuration file.
pub fn load<C: clap::Parser>() -> Result<Settings<C>, ConfigError> {
    load_from(std::env::args_os().collect())
}

/// [`load`] over given arguments (the program name first).
pub fn load_from<C: clap::Parser>(argv: Vec<OsString>) -> Result<Settings<C>, ConfigError> {
    let command = with_env_names(C::command());
    let first = command.clone().try_get_matches_from(&argv)?;
    let leaf = match first.subcommand() {
        Some((_, m)) => m,
        None => &first,
    };
    let file = leaf.get_one::<PathBuf>("config").or_else(|| first.get_one::<PathBuf>("config")).cloned();
    let Some(path) = file else {
        let cli = C::from_arg_matches(&first)?;
        return Ok(Settings { cli, command, matches: first, file: None, from_file: HashSet::new() });
    };
    let file_error = |message: String| ConfigError::File { path: path.display().to_string(), message };
    let text = std::fs::read_to_string(&path).map_err(|e| file_error(e.to_string()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| file_error(e.message().to_string()))?;

    // Values go to the subcommand in use (`migrate` takes only the settings it shares with the
    // server), but every key must be a setting of the server itself.
    let (active, active_matches) = match first.subcommand() {
        Some((name, m)) => (command.find_subcommand(name).cloned().unwrap_or_else(|| command.clone()), m),
        None => (command.clone(), &first),
    };
    let mut extra: Vec<OsString> = Vec::new();
    let mut from_file = HashSet::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        if !command.get_arguments().any(|a| is_setting(a) && a.get_long() == Some(long.as_str())) {
            let known: Vec<String> = command
                .get_arguments()
                .filter(|a| is_setting(a))
                .filter_map(|a| a.get_long())
                .map(|l| l.replace('-', "_"))
                .collect();
            return Err(file_error(format!("unknown setting `{key}` (the settings are: {})", known.join(", "))));
        }
        let Some(arg) = active.get_arguments().find(|a| a.get_long() == Some(long.as_str())) else {
            continue;
        };
        let id = arg.get_id().as_str().to_string();
        if matches!(active_matches.value_source(&id), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
            continue;
        }
        if arg.get_action().takes_values() {
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => return Err(file_error(format!("setting `{key}` must be a string, a number or a boolean"))),
            };
            extra.push(format!("--{long}={text}").into());
        } else {
            match value {
                toml::Value::Boolean(true) => extra.push(format!("--{long}").into()),
                toml::Value::Boolean(false) => {}
                _ => return Err(file_error(format!("setting `{key}` must be true or false"))),
            }
        }
        from_file.insert(id);
    }
    let mut full = argv;
    full.extend(extra);
    // The flags and environment parsed above, so a failure now is the file's.
    let matches = command.clone().try_get_matches_from(&full).map_err(|e| file_error(first_line(&e)))?;
    let cli = C::from_arg_matches(&matches)?;
    Ok(Settings { cli, command, matches, file: Some(path), from_file })
}

/// clap's message without its usage lines and `error:` prefix, for a file's setting.
fn first_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let line = text.lines().next().unwrap_or_default();
    line.trim_start_matches("error: ").to_string()
}

impl<C> Settings<C> {
    /// The configuration file read, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Where the setting with this clap ID got its value (`None`: unset, no default).
    pub fn origin(&self, id: &str) -> Option<Origin> {
        let matches = self.active_matches();
        if self.from_file.contains(id) {
            return Some(Origin::File);
        }
        match matches.try_get_raw(id).ok().flatten().and(matches.value_source(id)) {
            Some(ValueSource::CommandLine) => Some(Origin::Flag),
            Some(ValueSource::EnvVariable) => Some(Origin::Environment),
            Some(ValueSource::DefaultValue) => Some(Origin::Default),
            _ => None,
        }
    }

    fn active(&self) -> (&Command, &ArgMatches) {
        match self.matches.subcommand() {
            Some((name, m)) => (self.command.find_subcommand(name).unwrap_or(&self.command), m),
            None => (&self.command, &self.matches),
        }
    }

    fn active_matches(&self) -> &ArgMatches {
        self.active().1
    }

    /// The effective settings, one `key = value  # origin` line each, secrets redacted: what
    /// `--check-config` prints.
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let (command, matches) = self.active();
        let mut out = String::new();
        if let Some(file) = &self.file {
            let _ = writeln!(out, "# configuration file: {}", file.display());
        }
        for arg in command.get_arguments().filter(|a| is_setting(a)) {
            let id = arg.get_id().as_str();
            let key = arg.get_long().unwrap_or(id).replace('-', "_");
            let values: Vec<String> = matches
                .try_get_raw(id)
                .ok()
                .flatten()
                .map(|vals| vals.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let shown = if values.is_empty() {
                "(not set)".to_string()
            } else if is_secret(arg) {
                "(set, redacted)".to_string()
            } else {
                values.iter().map(|v| toml_value(&super::runtime::redact_url(v))).collect::<Vec<_>>().join(", ")
            };
            let origin = match self.origin(id) {
                Some(Origin::Flag) => format!("flag --{}", key.replace('_', "-")),
                Some(Origin::Environment) => {
                    format!(
                        "environment {}",
                        arg.get_env().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default()
                    )
                }
                Some(Origin::File) => "configuration file".to_string(),
                Some(Origin::Default) => "default".to_string(),
                None => "unset".to_string(),
            };
            let _ = writeln!(out, "{key} = {shown}  # {origin}");
        }
        out
    }
}

/// A value as it would be written in the configuration file.
fn toml_value(v: &str) -> String {
    if v == "true" || v == "false" || v.parse::<i64>().is_ok() {
        v.to_string()
    } else {
        format!("{v:?}")
    }
}

/// Settings whose values must never be printed: tokens.
fn is_secret(arg: &clap::Arg) -> bool {
    arg.is_hide_env_values_set() || arg.get_id().as_str().contains("token")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::io::Write;

    /// A server-like command line. Each test uses its own flag names, because the environment is
    /// shared by the tests running in parallel.
    #[derive(Parser, Debug)]
    #[command(args_conflicts_with_subcommands = true)]
    struct Cli {
        #[arg(long, global = true, env = "DUET_CONFIG_TEST_FILE")]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<Sub>,
        #[arg(long, default_value = "sqlite:a.db")]
        database: String,
        #[arg(long, default_value_t = 10)]
        zz_size: usize,
        #[arg(long, default_value_t = 1)]
        zz_env_size: usize,
        #[arg(long, default_value_t = 1)]
        zz_both: usize,
        #[arg(long, hide_env_values = true)]
        zz_admin_token: Option<String>,
        #[arg(long)]
        zz_flag: bool,
        #[arg(long)]
        zz_check: bool,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Sub {
        Migrate {
            #[arg(long, default_value = "sqlite:a.db")]
            database: String,
        },
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn args(list: &[&str]) -> Vec<OsString> {
        std::iter::once("srv").chain(list.iter().copied()).map(OsString::from).collect()
    }

    #[test]
    fn defaults_without_a_file() {
        let s = load_from::<Cli>(args(&[])).unwrap();
        assert_eq!((s.cli.database.as_str(), s.cli.zz_size, s.cli.zz_flag), ("sqlite:a.db", 10, false));
        assert_eq!(s.origin("zz_size"), Some(Origin::Default));
        assert_eq!(s.origin("zz_admin_token"), None);
        assert!(s.file().is_none());
    }

    #[test]
    fn the_file_beats_defaults_and_loses_to_flags_and_environment() {
        let f =
            file("database = \"postgres://u:pw@h/db\"\nzz_size = 25\nzz-env-size = 7\nzz_both = 3\nzz_flag = true\n");
        std::env::set_var("DUET_ZZ_ENV_SIZE", "8");
        std::env::set_var("DUET_ZZ_BOTH", "9");
        let path = f.path().to_str().unwrap();
        let s = load_from::<Cli>(args(&["--config", path, "--zz-both", "4"])).unwrap();
        assert_eq!(s.cli.database, "postgres://u:pw@h/db");
        assert_eq!(s.cli.zz_size, 25);
        assert_eq!(s.cli.zz_env_size, 8, "the environment beats the file");
        assert_eq!(s.cli.zz_both, 4, "a flag beats the environment and the file");
        assert!(s.cli.zz_flag);
        assert_eq!(s.origin("zz_size"), Some(Origin::File));
        assert_eq!(s.origin("zz_env_size"), Some(Origin::Environment));
        assert_eq!(s.origin("zz_both"), Some(Origin::Flag));
        let described = s.describe();
        assert!(described.contains("zz_size = 25  # configuration file"), "{described}");
        assert!(described.contains("zz_env_size = 8  # environment DUET_ZZ_ENV_SIZE"), "{described}");
        assert!(described.contains("database = \"postgres://u:***@h/db\""), "{described}");
        // (Not just "pw": the random name of the test's temporary file may hold those letters.)
        assert!(!described.contains("u:pw@"), "{described}");
    }

    #[test]
    fn every_setting_has_its_environment_variable() {
        std::env::set_var("DUET_ZZ_CHECK", "true");
        let s = load_from::<Cli>(args(&[])).unwrap();
        assert!(s.cli.zz_check);
        assert_eq!(s.origin("zz_check"), Some(Origin::Environment));
    }

    #[test]
    fn secrets_are_redacted() {
        let f = file("zz_admin_token = \"hunter2-secret\"\n");
        let s = load_from::<Cli>(args(&["--config", f.path().to_str().unwrap()])).unwrap();
        assert_eq!(s.cli.zz_admin_token.as_deref(), Some("hunter2-secret"));
        let described = s.describe();
        assert!(described.contains("zz_admin_token = (set, redacted)  # configuration file"), "{described}");
        assert!(!described.contains("hunter2"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_naming_the_file() {
        let f = file("zz_sise = 3\n");
        let err = load_from::<Cli>(args(&["--config", f.path().to_str().unwrap()])).err().unwrap().to_string();
        assert!(err.contains("unknown setting `zz_sise`") && err.contains("zz_size"), "{err}");
        assert!(err.contains(f.path().to_str().unwrap()), "{err}");

        let f = file("zz_size = \"many\"\n");
        let err = load_from::<Cli>(args(&["--config", f.path().to_str().unwrap()])).err().unwrap().to_string();
        assert!(err.contains("invalid value 'many'") && err.contains("zz-size"), "{err}");

        let f = file("zz_flag = \"yes\"\n");
        let err = load_from::<Cli>(args(&["--config", f.path().to_str().unwrap()])).err().unwrap().to_string();
        assert!(err.contains("`zz_flag` must be true or false"), "{err}");

        let f = file("zz_size = [1, 2]\n");
        let err = load_from::<Cli>(args(&["--config", f.path().to_str().unwrap()])).err().unwrap().to_string();
        assert!(err.contains("must be a string, a number or a boolean"), "{err}");

        let f = file("zz_size = 3\nthis is not toml\n");
        let err = load_from::<Cli>(args(&["--config", f.path().to_str().unwrap()])).err().unwrap().to_string();
        assert!(err.starts_with("configuration file"), "{err}");

        let err = load_from::<Cli>(args(&["--config", "/nonexistent/duet.toml"])).err().unwrap().to_string();
        assert!(err.contains("/nonexistent/duet.toml") && err.contains("No such file"), "{err}");
    }

    #[test]
    fn a_subcommand_takes_the_settings_it_shares() {
        let f = file("database = \"sqlite:from-file.db\"\nzz_size = 3\n");
        let s = load_from::<Cli>(args(&["migrate", "--config", f.path().to_str().unwrap()])).unwrap();
        match &s.cli.command {
            Some(Sub::Migrate { database }) => assert_eq!(database, "sqlite:from-file.db"),
            None => panic!("no subcommand"),
        }
        assert!(s.describe().contains("database = \"sqlite:from-file.db\""));
    }
}
