//! The deployment files in deploy/ agree with the configuration they ship: the Kubernetes
//! manifests parse, the embedded config validates, and every port, probe, mount and secret the
//! manifests name is the one the config uses. The systemd unit is hardened and its config
//! writes only where the unit lets it; the Docker HEALTHCHECK's command works.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use auditgate::config::Config;
use yaml_rust2::{Yaml, YamlLoader};

use crate::support::{TempDir, TestSidecar, Upstream};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// Every document of every manifest, by kind and name.
fn manifests() -> BTreeMap<(String, String), Yaml> {
    let mut all = BTreeMap::new();
    let kustomization = YamlLoader::load_from_str(&read("deploy/kubernetes/kustomization.yaml"))
        .expect("kustomization parses");
    let resources = kustomization[0]["resources"]
        .as_vec()
        .expect("resources")
        .iter()
        .map(|resource| resource.as_str().expect("a file name").to_string())
        .collect::<Vec<_>>();
    assert!(resources.len() >= 3);
    // Applying the kustomization must never replace the user's real secrets with placeholders.
    assert!(
        !resources.iter().any(|file| file.contains("secret")),
        "the kustomization applies a secret file: {resources:?}"
    );
    for file in resources
        .iter()
        .map(String::as_str)
        .chain(["secret.example.yaml"])
    {
        let documents = YamlLoader::load_from_str(&read(&format!("deploy/kubernetes/{file}")))
            .unwrap_or_else(|error| panic!("{file} does not parse: {error}"));
        for document in documents {
            let kind = document["kind"].as_str().expect("kind").to_string();
            let name = document["metadata"]["name"]
                .as_str()
                .expect("metadata.name")
                .to_string();
            if file != "secret.example.yaml" {
                assert_ne!(
                    kind, "Secret",
                    "{file} holds a Secret the kustomization would apply"
                );
            }
            all.insert((kind, name), document);
        }
    }
    all
}

fn get<'a>(all: &'a BTreeMap<(String, String), Yaml>, kind: &str, name: &str) -> &'a Yaml {
    all.get(&(kind.to_string(), name.to_string()))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The config text with the secrets a test machine does not have swapped for stand-ins: a fresh
/// signing key, and masking instead of an HMAC key from the environment.
fn validate_config(text: &str, dir: &TempDir) -> Config {
    let key = dir.0.join("log.key");
    auditgate::log::head::LogSigner::write_new(&key).expect("key");
    let mut text = text.to_string();
    for (from, to) in [
        (
            "signing_key = \"/etc/auditgate-keys/log.key\"".to_string(),
            format!("signing_key = \"{}\"", key.display()),
        ),
        (
            "mode = \"hmac\"\nhmac_key_env = \"AUDITGATE_REDACT_KEY\"".to_string(),
            "mode = \"mask\"".to_string(),
        ),
    ] {
        text = text.replace(&from, &to);
    }
    Config::parse(&text, &dir.0).unwrap_or_else(|errors| panic!("config invalid: {errors:?}"))
}

fn port_of(container: &Yaml, name: &str) -> u16 {
    container["ports"]
        .as_vec()
        .expect("ports")
        .iter()
        .find(|port| port["name"].as_str() == Some(name))
        .and_then(|port| port["containerPort"].as_i64())
        .and_then(|port| u16::try_from(port).ok())
        .unwrap_or_else(|| panic!("no port named {name}"))
}

fn container<'a>(deployment: &'a Yaml, name: &str) -> &'a Yaml {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_vec()
        .expect("containers")
        .iter()
        .find(|container| container["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

#[test]
fn the_kubernetes_sidecar_matches_its_config() {
    let all = manifests();
    let config_map = get(&all, "ConfigMap", "auditgate-config");
    let text = config_map["data"]["auditgate.toml"]
        .as_str()
        .expect("auditgate.toml in the ConfigMap");
    let dir = TempDir::new("deploy");
    let config = validate_config(text, &dir);

    let deployment = get(&all, "Deployment", "app");
    let sidecar = container(deployment, "auditgate");
    let app = container(deployment, "app");
    // Ports: the container exposes what the config listens on, and the app is the upstream.
    assert_eq!(port_of(sidecar, "http"), config.proxy.listen.port());
    assert_eq!(port_of(sidecar, "admin"), config.admin.listen.port());
    assert!(
        !config.admin.listen.ip().is_loopback(),
        "the kubelet probes over the pod network"
    );
    let upstream_port: u16 = config
        .proxy
        .upstream
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("upstream port");
    assert_eq!(port_of(app, "app"), upstream_port);
    assert!(config.proxy.upstream.starts_with("127.0.0.1:"), "same pod");
    // Probes: startup and liveness on /healthz, readiness on /readyz, all on the admin port.
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = &sidecar[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        let port = match &get["port"] {
            Yaml::String(name) => port_of(sidecar, name),
            Yaml::Integer(number) => u16::try_from(*number).expect("port"),
            other => panic!("{probe} port {other:?}"),
        };
        assert_eq!(
            port,
            config.admin.listen.port(),
            "{probe} asks the admin listener"
        );
    }
    // A store migration at start may take minutes: the startup probe gives it ten before the
    // liveness probe, which would restart the pod in the middle of it, takes over.
    let patience = |probe: &str| {
        sidecar[probe]["periodSeconds"].as_i64().expect("period")
            * sidecar[probe]["failureThreshold"]
                .as_i64()
                .expect("threshold")
    };
    assert!(
        patience("startupProbe") >= 600,
        "{}",
        patience("startupProbe")
    );
    // The Service reaches the app only through auditgate.
    let service = get(&all, "Service", "app");
    let target = service["spec"]["ports"][0]["targetPort"]
        .as_str()
        .expect("named target port");
    assert_eq!(port_of(sidecar, target), config.proxy.listen.port());

    // Mounts: the config where args point, the store and heads on the writable data volume.
    let mounts: BTreeMap<String, String> = sidecar["volumeMounts"]
        .as_vec()
        .expect("mounts")
        .iter()
        .map(|mount| {
            (
                mount["name"].as_str().expect("name").to_string(),
                mount["mountPath"].as_str().expect("path").to_string(),
            )
        })
        .collect();
    let args: Vec<&str> = sidecar["args"]
        .as_vec()
        .expect("args")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    let config_arg = args
        .iter()
        .skip_while(|arg| **arg != "--config")
        .nth(1)
        .expect("--config");
    assert_eq!(
        Path::new(config_arg).parent(),
        Some(Path::new(&mounts["config"]))
    );
    assert!(config.store.path.starts_with(&mounts["data"]));
    assert!(text.contains(&format!(
        "signing_key = \"{}/log.key\"",
        mounts["signing-key"]
    )));
    assert_eq!(
        sidecar["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );

    // Secrets: every one referenced exists, and the redaction key's variable is the config's.
    let env: BTreeMap<String, (String, String)> = sidecar["env"]
        .as_vec()
        .expect("env")
        .iter()
        .filter(|variable| !variable["valueFrom"].is_badvalue())
        .map(|variable| {
            let reference = &variable["valueFrom"]["secretKeyRef"];
            (
                variable["name"].as_str().expect("name").to_string(),
                (
                    reference["name"].as_str().expect("secret").to_string(),
                    reference["key"].as_str().expect("key").to_string(),
                ),
            )
        })
        .collect();
    for (variable, (secret, key)) in &env {
        let secret = get(&all, "Secret", secret);
        assert!(
            !secret["stringData"][key.as_str()].is_badvalue(),
            "{variable}: no key {key} in the secret"
        );
    }
    assert!(text.contains("hmac_key_env = \"AUDITGATE_REDACT_KEY\""));
    assert!(env.contains_key("AUDITGATE_REDACT_KEY"));
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_vec()
        .expect("volumes");
    let secret_volume = volumes
        .iter()
        .find(|volume| volume["name"].as_str() == Some("signing-key"))
        .expect("signing key volume");
    let secret_name = secret_volume["secret"]["secretName"]
        .as_str()
        .expect("name");
    assert!(!get(&all, "Secret", secret_name)["stringData"]["log.key"].is_badvalue());
}

#[test]
fn the_systemd_unit_is_hardened_and_its_config_writes_only_its_state() {
    let unit = read("deploy/systemd/auditgate.service");
    for line in [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "StateDirectory=auditgate",
        "ConfigurationDirectory=auditgate",
        "ExecStart=/usr/local/bin/auditgate run --config /etc/auditgate/auditgate.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(
            unit.lines().any(|unit_line| unit_line.trim() == line),
            "missing {line:?}"
        );
    }
    let dir = TempDir::new("systemd");
    let config = validate_config(&read("deploy/systemd/auditgate.toml"), &dir);
    // ProtectSystem=strict leaves only the StateDirectory writable.
    let state = Path::new("/var/lib/auditgate");
    assert!(config.store.path.starts_with(state));
    assert!(config.store.spill_path().starts_with(state));
    match config.stream.as_ref().map(|stream| &stream.target) {
        Some(auditgate::writer::stream::StreamTarget::File(path)) => {
            assert!(path.starts_with(state));
            // The Vector example tails the very file.
            let vector: toml::Table = read("deploy/siem/vector.toml")
                .parse()
                .expect("vector.toml");
            let include = vector["sources"]["auditgate"]["include"][0]
                .as_str()
                .expect("include");
            assert_eq!(Path::new(include), path);
        }
        other => panic!("expected a stream file, got {other:?}"),
    }
    for target in &config.log.publish_heads {
        if let auditgate::log::config::PublishTarget::File(path) = target {
            assert!(path.starts_with(state));
        }
    }
}

#[tokio::test]
async fn the_docker_healthcheck_command_reports_health() {
    let dockerfile = read("Dockerfile");
    let healthcheck = dockerfile
        .lines()
        .skip_while(|line| !line.starts_with("HEALTHCHECK"))
        .take(2)
        .collect::<String>();
    assert!(
        healthcheck.contains("\"auditgate\", \"health\"")
            || healthcheck.contains("/usr/local/bin/auditgate\", \"health\""),
        "{healthcheck}"
    );
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start(upstream.addr, "").await;
    let admin = sidecar.admin;
    let timeout = std::time::Duration::from_secs(5);
    let (healthy, ready, missing, closed) = tokio::task::spawn_blocking(move || {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port");
        (
            auditgate::commands::health::health_check(&format!("http://{admin}/healthz"), timeout),
            auditgate::commands::health::health_check(&format!("http://{admin}/readyz"), timeout),
            auditgate::commands::health::health_check(
                &format!("http://{admin}/no-such-page"),
                timeout,
            ),
            auditgate::commands::health::health_check(&format!("http://{closed}/healthz"), timeout),
        )
    })
    .await
    .expect("health task");
    assert_eq!(healthy, Ok(200));
    assert_eq!(ready, Ok(200));
    assert_eq!(missing, Ok(404));
    assert!(closed.is_err(), "{closed:?}");
}
