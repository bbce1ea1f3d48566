//! The deployment files under `deploy/` checked against the binaries they start: every file
//! parses, every command line of the compose file, the Kubernetes manifests, the systemd units
//! and the Dockerfile names a duet program whose arguments it accepts, every server started from
//! them passes `--check-config` with the configuration file and environment it would get, every
//! migration command migrates a database, and the cross-references inside the manifests (secret
//! keys, config maps, named ports, service selectors) resolve. Images cannot be built here (no
//! container engine), so the Dockerfile is checked as text.

use duet_cli::process::sibling_binary;
use serde_yaml_ng::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy_dir().join(path)).unwrap_or_else(|e| format!("cannot read deploy/{path}: {e}"))
}

/// A command line found in a deployment file, with the environment and files it would get.
#[derive(Debug)]
struct Invocation {
    origin: String,
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    /// Paths inside the container or host, mapped to files in the repository.
    files: BTreeMap<String, PathBuf>,
}

/// A database key for the placeholders that name one (32 bytes, base64).
const STAND_IN_DATABASE_KEY: &str = "c3RhbmQtaW4gZGF0YWJhc2Uga2V5LCAzMiBieXRlcyE=";

/// A value good enough for a secret placeholder: a token, a database key, or a PostgreSQL URL.
fn stand_in(name: &str) -> String {
    if name.contains("DATABASE_KEY") {
        STAND_IN_DATABASE_KEY.into()
    } else if name.contains("DATABASE") {
        "postgres://duet:secret@postgres.invalid:5432/duet".into()
    } else {
        "stand-in-token-0123456789-abcdefghij".into()
    }
}

/// Runs an invocation: a server with `--check-config`, a migration against a fresh SQLite file,
/// anything else with `--help` after its arguments (which clap checks before it prints help).
fn check(inv: &Invocation) {
    let program = inv.argv.first().unwrap_or_else(|| panic!("{}: empty command", inv.origin));
    let name = Path::new(program).file_name().unwrap().to_str().unwrap();
    assert!(["duet-leader", "duet-helper", "duet"].contains(&name), "{}: unknown program {program}", inv.origin);
    let mut args: Vec<String> = inv
        .argv
        .iter()
        .skip(1)
        .map(|a| inv.files.get(a).map(|p| p.display().to_string()).unwrap_or_else(|| a.clone()))
        .collect();
    for arg in &args {
        assert!(!arg.starts_with("/etc/"), "{}: {arg} is not provided by the deployment file", inv.origin);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(sibling_binary(name).unwrap());
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).current_dir(dir.path());
    for (k, v) in &inv.env {
        cmd.env(k, v);
    }
    let is_server = name != "duet";
    let migrate = args.first().map(String::as_str) == Some("migrate");
    let expect: &str = if is_server && migrate {
        let db = format!("sqlite:{}", dir.path().join("migrate.db").display());
        cmd.env("DUET_DATABASE", db);
        "is at schema version"
    } else if is_server && !args.iter().any(|a| a == "--help") {
        args.push("--check-config".into());
        "configuration OK"
    } else {
        if !args.iter().any(|a| a == "--help") {
            args.push("--help".into());
        }
        "Usage:"
    };
    let out = cmd.args(&args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(expect),
        "{}: {name} {args:?} failed ({}):\n{stdout}\n{}",
        inv.origin,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `${NAME:?message}` and `${NAME}` in a compose value, with stand-ins for the secrets.
fn compose_substitute(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').map(|e| start + e).expect("closed ${...}");
        let name = rest[start + 2..end].split([':', '-', '?']).next().unwrap();
        out.push_str(&if name.contains("PASSWORD") { "hexpassword".to_string() } else { stand_in(name) });
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence().map(|s| s.iter().map(|x| x.as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

#[test]
fn example_configuration_files_pass_check_config() {
    for role in ["leader", "helper"] {
        let file = deploy_dir().join(format!("config/{role}.toml"));
        let env =
            BTreeMap::from(["DUET_ADMIN_TOKEN", "DUET_DATABASE_KEYS"].map(|name| (name.to_string(), stand_in(name))));
        check(&Invocation {
            origin: format!("deploy/config/{role}.toml"),
            argv: vec![format!("duet-{role}"), "--config".into(), file.display().to_string()],
            env,
            files: BTreeMap::new(),
        });
    }
}

#[test]
fn compose_file_commands_run() {
    let doc: Value = serde_yaml_ng::from_str(&read("compose.yaml")).unwrap();
    let services = doc["services"].as_mapping().unwrap();
    let mut checked = Vec::new();
    for (name, service) in services {
        let name = name.as_str().unwrap();
        let image = service["image"].as_str().unwrap_or_default();
        if image != "duet:latest" {
            continue;
        }
        let argv = strings(&service["command"]);
        let mut env = BTreeMap::new();
        if let Some(vars) = service["environment"].as_mapping() {
            for (k, v) in vars {
                env.insert(k.as_str().unwrap().to_string(), compose_substitute(v.as_str().unwrap()));
            }
        }
        let mut files = BTreeMap::new();
        for volume in strings(&service["volumes"]) {
            let parts: Vec<&str> = volume.split(':').collect();
            if parts[0].starts_with("./") {
                let source = deploy_dir().join(&parts[0][2..]);
                assert!(source.exists(), "compose service {name}: {} does not exist", parts[0]);
                files.insert(parts[1].to_string(), source);
            }
        }
        check(&Invocation { origin: format!("compose service {name}"), argv, env, files });
        checked.push(name.to_string());
    }
    checked.sort();
    assert_eq!(checked, ["cli", "helper", "helper-migrate", "leader", "leader-migrate"]);
    // Servers wait for their migrations, migrations for the database.
    for (server, migration) in [("leader", "leader-migrate"), ("helper", "helper-migrate")] {
        assert_eq!(
            doc["services"][server]["depends_on"][migration]["condition"].as_str(),
            Some("service_completed_successfully")
        );
        assert_eq!(doc["services"][migration]["depends_on"]["postgres"]["condition"].as_str(), Some("service_healthy"));
    }
    assert!(read("compose/initdb.sql").contains("CREATE DATABASE duet_helper"));
}

/// The documents of a Kubernetes manifest by (kind, name).
fn manifests(path: &str) -> BTreeMap<(String, String), Value> {
    let text = read(path);
    let mut out = BTreeMap::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if v.is_null() {
            continue;
        }
        let kind = v["kind"].as_str().unwrap().to_string();
        let name = v["metadata"]["name"].as_str().unwrap().to_string();
        let api = v["apiVersion"].as_str().unwrap();
        let expected = match kind.as_str() {
            "Deployment" => "apps/v1",
            "Job" => "batch/v1",
            "Namespace" | "Secret" | "ConfigMap" | "Service" => "v1",
            other => panic!("{path}: unexpected kind {other}"),
        };
        assert_eq!(api, expected, "{path}: {kind}/{name}");
        out.insert((kind, name), v);
    }
    out
}

#[test]
fn kubernetes_manifests_are_consistent_and_their_commands_run() {
    for role in ["leader", "helper"] {
        let path = format!("kubernetes/{role}.yaml");
        let docs = manifests(&path);
        let get = |kind: &str, name: &str| docs.get(&(kind.to_string(), name.to_string()));
        let namespace = format!("duet-{role}");
        assert!(get("Namespace", &namespace).is_some(), "{path}");
        for ((kind, name), v) in &docs {
            if kind != "Namespace" {
                assert_eq!(v["metadata"]["namespace"].as_str(), Some(namespace.as_str()), "{path}: {kind}/{name}");
            }
        }
        let workloads: Vec<&Value> =
            docs.iter().filter(|((k, _), _)| k == "Deployment" || k == "Job").map(|(_, v)| v).collect();
        assert_eq!(workloads.len(), 2, "{path}: a migration job and a deployment");
        let mut deployment_labels = None;
        for w in &workloads {
            let kind = w["kind"].as_str().unwrap();
            let pod = &w["spec"]["template"]["spec"];
            if kind == "Deployment" {
                let labels = &w["spec"]["template"]["metadata"]["labels"];
                for (k, v) in w["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
                    assert_eq!(&labels[k.as_str().unwrap()], v, "{path}: the selector matches the pods");
                }
                deployment_labels = Some(labels.clone());
            }
            // Volumes: config maps defined in the file, mounted where the arguments expect.
            let mut mounted: BTreeMap<String, PathBuf> = BTreeMap::new();
            let config_dir = tempfile::tempdir().unwrap().keep();
            for volume in pod["volumes"].as_sequence().unwrap() {
                if let Some(cm) = volume["configMap"]["name"].as_str() {
                    let map = get("ConfigMap", cm).unwrap_or_else(|| panic!("{path}: no ConfigMap {cm}"));
                    for (key, text) in map["data"].as_mapping().unwrap() {
                        let key = key.as_str().unwrap();
                        let text = text.as_str().unwrap();
                        // The config map carries the example file, byte for byte.
                        assert_eq!(text, read(&format!("config/{key}")), "{path}: ConfigMap {cm} {key}");
                        std::fs::write(config_dir.join(key), text).unwrap();
                        mounted.insert(volume["name"].as_str().unwrap().to_string(), config_dir.clone());
                    }
                }
            }
            for container in pod["containers"].as_sequence().unwrap() {
                let origin = format!("{path}: {kind} container {}", container["name"].as_str().unwrap());
                let mut files = BTreeMap::new();
                for mount in container["volumeMounts"].as_sequence().into_iter().flatten() {
                    if let Some(dir) = mounted.get(mount["name"].as_str().unwrap()) {
                        let at = mount["mountPath"].as_str().unwrap();
                        for entry in std::fs::read_dir(dir).unwrap() {
                            let entry = entry.unwrap();
                            let inside = format!("{at}/{}", entry.file_name().to_str().unwrap());
                            files.insert(inside, entry.path());
                        }
                    }
                }
                let mut env = BTreeMap::new();
                for var in container["env"].as_sequence().into_iter().flatten() {
                    let name = var["name"].as_str().unwrap().to_string();
                    let value = match var["value"].as_str() {
                        Some(v) => v.to_string(),
                        None => {
                            let secret = var["valueFrom"]["secretKeyRef"]["name"].as_str().unwrap();
                            let key = var["valueFrom"]["secretKeyRef"]["key"].as_str().unwrap();
                            let s = get("Secret", secret).unwrap_or_else(|| panic!("{origin}: no Secret {secret}"));
                            assert!(!s["stringData"][key].is_null(), "{origin}: Secret {secret} has no {key}");
                            stand_in(key)
                        }
                    };
                    env.insert(name, value);
                }
                let mut argv = strings(&container["command"]);
                argv.extend(strings(&container["args"]));
                // Probes name ports the container has, on the operations listener.
                let ports: Vec<String> = container["ports"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .map(|p| p["name"].as_str().unwrap().to_string())
                    .collect();
                for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                    let p = &container[probe]["httpGet"];
                    if let Some(port) = p["port"].as_str() {
                        assert!(ports.contains(&port.to_string()), "{origin}: {probe} port {port}");
                        assert!(["/healthz", "/readyz"].contains(&p["path"].as_str().unwrap()), "{origin}: {probe}");
                    }
                }
                check(&Invocation { origin, argv, env, files });
            }
        }
        // Services select the deployment's pods and name its ports.
        let labels = deployment_labels.expect("a deployment");
        let services: Vec<&Value> = docs.iter().filter(|((k, _), _)| k == "Service").map(|(_, v)| v).collect();
        assert!(!services.is_empty(), "{path}: a service");
        for svc in services {
            for (k, v) in svc["spec"]["selector"].as_mapping().unwrap() {
                assert_eq!(&labels[k.as_str().unwrap()], v, "{path}: service selector");
            }
            for port in svc["spec"]["ports"].as_sequence().unwrap() {
                let target = port["targetPort"].as_str().unwrap_or("");
                assert!(["http", "metrics"].contains(&target), "{path}: targetPort {target:?}");
            }
        }
    }
}

#[test]
fn systemd_units_start_what_exists() {
    for role in ["leader", "helper"] {
        let path = format!("systemd/duet-{role}.service");
        let text = read(&path);
        let lines: BTreeMap<&str, Vec<&str>> = text
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains('='))
            .filter_map(|l| l.split_once('='))
            .fold(BTreeMap::new(), |mut m, (k, v)| {
                m.entry(k.trim()).or_default().push(v.trim());
                m
            });
        let config = deploy_dir().join(format!("config/{role}.toml"));
        let files = BTreeMap::from([(format!("/etc/duet/{role}.toml"), config)]);
        let env =
            BTreeMap::from(["DUET_ADMIN_TOKEN", "DUET_DATABASE_KEYS"].map(|name| (name.to_string(), stand_in(name))));
        for key in ["ExecStartPre", "ExecStart"] {
            for line in lines.get(key).unwrap_or_else(|| panic!("{path}: no {key}")) {
                let argv: Vec<String> = line.split_whitespace().map(str::to_string).collect();
                assert_eq!(argv[0], format!("/usr/local/bin/duet-{role}"), "{path}: {key}");
                check(&Invocation { origin: format!("{path} {key}"), argv, env: env.clone(), files: files.clone() });
            }
        }
        assert_eq!(lines["KillSignal"], ["SIGTERM"], "{path}");
        let stop: u64 = lines["TimeoutStopSec"][0].parse().unwrap();
        assert!(stop > 30, "{path}: the server drains for up to 30 s");
        assert_eq!(lines["EnvironmentFile"], [format!("/etc/duet/{role}.env").as_str()], "{path}");
    }
}

#[test]
fn dockerfile_builds_and_ships_the_three_programs() {
    let text = read("Dockerfile");
    let build = text.lines().find(|l| l.contains("cargo build --release --locked -p duet-leader")).unwrap();
    for package in ["duet-leader", "duet-helper", "duet-cli"] {
        assert!(build.contains(&format!("-p {package}")), "{build}");
    }
    let copy = text.lines().find(|l| l.starts_with("COPY --from=builder")).expect("the runtime stage copies");
    for program in ["duet-leader", "duet-helper", "duet"] {
        assert!(copy.contains(&format!("/out/{program} ")) || copy.contains(&format!("/out/{program}\t")), "{copy}");
        assert!(text.contains(&format!("target/release/{program}")), "{program} is copied out of the build");
    }
    // Every workspace crate's manifest is copied for the dependency layer.
    let workspace = std::fs::read_to_string(deploy_dir().join("../Cargo.toml")).unwrap();
    let members: toml::Table = workspace.parse().unwrap();
    for member in members["workspace"]["members"].as_array().unwrap() {
        let m = member.as_str().unwrap();
        assert!(text.contains(&format!("COPY {m}/Cargo.toml {m}/")), "Dockerfile misses {m}/Cargo.toml");
        // A crate inside another's folder (client/cli) comes with that folder.
        let top = m.split('/').next().unwrap();
        assert!(text.contains(&format!("COPY {top} {top}\n")), "Dockerfile misses {top}/");
    }
    assert!(text.contains("COPY migrations migrations"), "migrations are embedded at build time");
    assert!(text.contains("USER 10001:10001"));
    let cmd = text.lines().find(|l| l.starts_with("CMD ")).unwrap();
    let argv: Vec<String> = serde_json::from_str(&cmd[4..]).unwrap();
    check(&Invocation { origin: "Dockerfile CMD".into(), argv, env: BTreeMap::new(), files: BTreeMap::new() });
}
