//! Offline checks of deploy/: the systemd unit (systemd-analyze verify and security), the Kubernetes manifests
//! (kubectl kustomize, kubernetes-validate --strict, cross-references the validators cannot see, the embedded
//! exporter config through `bms_exporter config check`) and the Containerfile's structure (no engine runs here).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::util::{Killed, Scratch, Simulator, free_port, http_get, required_program, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_bms_exporter");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{}: {e}", program.display()))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

// ---------------------------------------------------------------------------------------------------------------
// systemd

const UNIT: &str = "deploy/systemd/bms_exporter.service";

/// A copy of the unit whose ExecStart names the binary cargo built, since `verify` refuses a missing executable.
fn unit_copy(scratch: &Scratch, unit: &str) -> PathBuf {
    let original = "ExecStart=/usr/local/bin/bms_exporter ";
    assert!(unit.contains(original), "the unit should start /usr/local/bin/bms_exporter");
    scratch.write("bms_exporter.service", &unit.replace(original, &format!("ExecStart={BIN} ")))
}

/// `systemd-analyze verify` prints warnings for unknown keys and bad values but still exits 0, so any output at
/// all is a failure.
fn verify(unit: &Path) -> Output {
    let analyze = required_program("systemd-analyze", "systemd");
    run(&analyze, &["verify", "--man=no", unit.to_str().unwrap()])
}

#[test]
fn the_systemd_unit_verifies_without_a_word() {
    let scratch = Scratch::in_dir(&root().join("target"), "deploy-test-verify");
    let out = verify(&unit_copy(&scratch, &read(UNIT)));
    assert!(out.status.success() && text(&out).is_empty(), "systemd-analyze verify:\n{}", text(&out));

    // The same check notices a misspelt hardening key, so its silence above means something.
    let typo = read(UNIT).replace("ProtectSystem=strict", "ProtectSytem=strict");
    let out = verify(&unit_copy(&scratch, &typo));
    assert!(text(&out).contains("ProtectSytem"), "a misspelt key should be reported:\n{}", text(&out));
}

#[test]
fn the_bluetooth_drop_in_only_adds_the_bluetooth_group_and_the_unit_still_verifies_with_it() {
    let drop_in = read("deploy/systemd/bluetooth.conf");
    let settings = unit_settings(&drop_in);
    assert_eq!(settings, vec![("SupplementaryGroups".to_owned(), "dialout bluetooth".to_owned())]);
    // systemd reads a drop-in as if its lines were appended to the unit: verify that combination.
    let scratch = Scratch::in_dir(&root().join("target"), "deploy-test-bluetooth");
    let combined = format!("{}\n{}", read(UNIT), drop_in);
    let out = verify(&unit_copy(&scratch, &combined));
    assert!(out.status.success() && text(&out).is_empty(), "systemd-analyze verify with the drop-in:\n{}", text(&out));
    // The main unit can still talk to the system bus (a Unix socket) and names no group a host may lack.
    let unit = unit_settings(&read(UNIT));
    assert!(unit.iter().any(|(k, v)| k == "RestrictAddressFamilies" && v.split(' ').any(|f| f == "AF_UNIX")));
    assert!(!unit.iter().any(|(k, v)| k == "SupplementaryGroups" && v.contains("bluetooth")));
}

#[test]
fn the_systemd_unit_is_rated_well_below_medium_exposure() {
    // 1.5 "OK" with systemd 252 (see the unit's header); 2.0 leaves room for a newer systemd's weights while
    // still failing if a hardening block is lost (losing the syscall filter alone costs more than 0.5).
    let scratch = Scratch::in_dir(&root().join("target"), "deploy-test-security");
    let unit = unit_copy(&scratch, &read(UNIT));
    let analyze = required_program("systemd-analyze", "systemd");
    let out = run(&analyze, &["security", "--offline=true", "--threshold=20", unit.to_str().unwrap()]);
    assert!(out.status.success(), "exposure above 2.0:\n{}", text(&out));
    let loose = scratch.write("loose.service", "[Service]\nExecStart=/bin/true\n");
    let out = run(&analyze, &["security", "--offline=true", "--threshold=20", loose.to_str().unwrap()]);
    assert!(!out.status.success(), "an unhardened unit should fail the same threshold:\n{}", text(&out));
}

/// The unit's `Key=value` lines (comments and sections dropped).
fn unit_settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn the_systemd_unit_keeps_its_hardening_and_lets_serial_ports_through() {
    let settings = unit_settings(&read(UNIT));
    let has = |key: &str, value: &str| settings.iter().any(|(k, v)| k == key && v == value);
    for (key, value) in [
        ("ExecStart", "/usr/local/bin/bms_exporter $ARGS"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("EnvironmentFile", "-/etc/default/bms_exporter"),
        ("Restart", "on-failure"),
        ("DynamicUser", "yes"),
        ("SupplementaryGroups", "dialout"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("SystemCallArchitectures", "native"),
        ("SystemCallFilter", "@system-service"),
        ("SystemCallFilter", "~@privileged @resources"),
        ("CapabilityBoundingSet", ""),
        ("LimitNOFILE", "65536"),
        ("DevicePolicy", "closed"),
        ("DeviceAllow", "char-ttyUSB rw"),
        ("DeviceAllow", "char-ttyACM rw"),
        ("DeviceAllow", "char-ttyS rw"),
    ] {
        assert!(has(key, value), "the unit lacks {key}={value}");
    }
    // PrivateDevices=yes would hide every /dev/tty* node from the exporter.
    assert!(!settings.iter().any(|(k, _)| k == "PrivateDevices"), "PrivateDevices hides serial ports");
    assert!(settings.iter().any(|(k, v)| k == "Documentation" && v.starts_with("http")), "no documentation URL");
}

/// The environment file's ARGS, split on whitespace as systemd's `$ARGS` does.
fn env_file_args() -> Vec<String> {
    let env = read("deploy/systemd/bms_exporter.env");
    let args: Vec<&str> = env.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).collect();
    assert_eq!(args.len(), 1, "the env file should set ARGS only: {args:?}");
    let value = args[0].strip_prefix("ARGS=").expect("the env file sets ARGS");
    value.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn the_env_files_arguments_start_the_exporter_and_sigterm_stops_it_cleanly() {
    let mut args = env_file_args();
    let position = |flag: &str| args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("no {flag}")) + 1;
    let (config_at, listen_at) = (position("--config"), position("--web.listen-address"));
    assert_eq!(args[config_at], "/etc/bms_exporter/config.yaml");
    assert_eq!(args[listen_at], ":10485");

    // The same argument list, with the config and port moved to ones this test owns: a device behind a TCP
    // serial server that is not there, which must not stop the exporter from serving.
    let scratch = Scratch::in_dir(&root().join("target"), "deploy-test-env");
    let config = scratch.write("config.yaml", "devices:\n  - name: house\n    protocol: daly\n    tcp: 127.0.0.1:9\n");
    let addr = format!("127.0.0.1:{}", free_port());
    args[config_at] = config.to_str().unwrap().to_owned();
    args[listen_at] = addr.clone();
    let log = std::fs::File::create(scratch.0.join("stderr")).unwrap();
    let mut child = Killed(Command::new(BIN).args(&args).stdout(Stdio::null()).stderr(log).spawn().unwrap());
    wait_for("/-/healthy", Duration::from_secs(20), || {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("the exporter exited ({status}) on the env file's arguments:\n{}", read_log(&scratch));
        }
        http_get(&addr, "/-/healthy", &[]).filter(|r| r.status == 200)
    });

    // systemd's KillSignal=SIGTERM: the exporter must exit 0 so Restart=on-failure leaves it stopped.
    let kill = required_program("kill", "procps");
    let out = run(&kill, &["-TERM", &child.0.id().to_string()]);
    assert!(out.status.success(), "kill: {}", text(&out));
    let status = wait_for("the exporter to exit", Duration::from_secs(10), || child.0.try_wait().unwrap());
    assert!(status.success(), "SIGTERM should end the exporter with 0, got {status}");
}

fn read_log(scratch: &Scratch) -> String {
    std::fs::read_to_string(scratch.0.join("stderr")).unwrap_or_default()
}

/// The system calls a `systemd-analyze syscall-filter` group stands for, nested groups expanded.
fn syscall_group(analyze: &Path, group: &str) -> BTreeSet<String> {
    let out = run(analyze, &["syscall-filter", group]);
    assert!(out.status.success(), "syscall-filter {group}: {}", text(&out));
    let listing = String::from_utf8(out.stdout).unwrap();
    let mut calls = BTreeSet::new();
    for item in listing.lines().skip(1).map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if item.starts_with('@') {
            calls.extend(syscall_group(analyze, item));
        } else {
            calls.insert(item.to_owned());
        }
    }
    assert!(!calls.is_empty(), "{group} lists no system calls");
    calls
}

/// The system call names in an `strace -f` log: `PID name(...` and `PID <... name resumed>` lines.
fn traced_calls(log: &str) -> BTreeSet<String> {
    log.lines()
        // strace pads the PID column ("2611  execve(…" but "24566 execve(…"): split on the first run of spaces.
        .filter_map(|line| line.split_once(' ').map(|(_, rest)| rest.trim_start()))
        .filter_map(|rest| match rest.strip_prefix("<... ") {
            Some(resumed) => resumed.split(' ').next(),
            None => rest.split('(').next(),
        })
        .filter(|name| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
        .map(str::to_owned)
        .collect()
}

/// strace running the exporter. Killing strace alone would detach the exporter and leave it running, so a drop
/// kills strace's children first.
struct Tracer(std::process::Child);

impl Tracer {
    fn children(&self) -> Vec<String> {
        let list = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.0.id())).unwrap_or_default();
        list.split_whitespace().map(str::to_owned).collect()
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        for child in self.children() {
            let _ = Command::new("kill").args(["-KILL", &child]).status();
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn every_system_call_the_exporter_makes_passes_the_units_filter() {
    // SystemCallFilter= is the one setting `verify` cannot judge: a call outside it fails with EPERM at run time.
    // So run the exporter under strace through a whole life — start, a serial device (a PTY simulator, which
    // exercises the termios ioctls and flock), a TCP serial server, scrapes, a reload, SIGTERM — and check every call
    // against the unit's allow list minus its deny list.
    let settings = unit_settings(&read(UNIT));
    let filters: Vec<&str> =
        settings.iter().filter(|(k, _)| k == "SystemCallFilter").map(|(_, v)| v.as_str()).collect();
    let analyze = required_program("systemd-analyze", "systemd");
    let (mut allowed, mut denied) = (BTreeSet::new(), BTreeSet::new());
    for filter in &filters {
        let (set, groups) = match filter.strip_prefix('~') {
            Some(groups) => (&mut denied, groups),
            None => (&mut allowed, *filter),
        };
        for group in groups.split_whitespace() {
            set.extend(syscall_group(&analyze, group));
        }
    }
    assert!(!allowed.is_empty() && !denied.is_empty(), "filters: {filters:?}");

    let (_serial_sim, link) = Simulator::pty("deploy-filter", &["--protocol", "daly", "--time-scale", "0"]);
    let tcp_sim = Simulator::tcp("deploy-filter-tcp", &["--protocol", "pace", "--packs", "2", "--time-scale", "0"]);
    let scratch = Scratch::in_dir(&root().join("target"), "deploy-test-filter");
    let config = scratch.write(
        "config.yaml",
        &format!(
            "devices:\n  - name: usb\n    protocol: daly\n    serial: {}\n  - name: tcp\n    protocol: pace\n    tcp: {}\n",
            link.display(),
            tcp_sim.addr.as_deref().unwrap()
        ),
    );
    let strace = required_program("strace", "strace");
    let trace = scratch.0.join("strace.log");
    let addr = format!("127.0.0.1:{}", free_port());
    // Started with a soft open-file limit below the hard one (as systemd's default 1024:524288 would be), so the
    // trace holds the exporter raising it. prlimit runs outside strace: its own calls must not count.
    let hard = bms_exporter::server::raise_open_file_limit().expect("the test's open-file limits").hard;
    assert!(hard >= 64, "a hard open-file limit of {hard} leaves no room for the test");
    let nofile = format!("--nofile={}:{hard}", (hard / 2).min(1024));
    let mut tracer = Tracer(
        Command::new(required_program("prlimit", "util-linux"))
            .args([nofile.as_str(), "--", strace.to_str().unwrap()])
            .args(["-f", "-qq", "-o", trace.to_str().unwrap(), "--", BIN, "--config", config.to_str().unwrap()])
            .args(["--web.listen-address", &addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let metrics = wait_for("both devices up", Duration::from_secs(30), || {
        assert!(tracer.0.try_wait().unwrap().is_none(), "the exporter exited under strace");
        http_get(&addr, "/metrics", &[])
            .filter(|r| r.body.contains("bms_up{device=\"usb\"} 1") && r.body.contains("bms_up{device=\"tcp\"} 1"))
    });
    assert!(metrics.body.contains("bms_cell_voltage"), "no cell voltages scraped");

    // The exporter is strace's child; SIGHUP (the unit's ExecReload=) and SIGTERM go to it as systemd sends them.
    let exporter = tracer.children().into_iter().next().expect("strace's child");
    let reloaded_at = |body: &str| {
        body.lines().find_map(|l| {
            l.strip_prefix("bms_exporter_config_last_reload_success_timestamp_seconds ")?.parse::<f64>().ok()
        })
    };
    let loaded = reloaded_at(&metrics.body).expect("the reload timestamp in /metrics");
    std::thread::sleep(Duration::from_millis(20));
    let out = run(&required_program("kill", "procps"), &["-HUP", &exporter]);
    assert!(out.status.success(), "kill: {}", text(&out));
    wait_for("the reload", Duration::from_secs(10), || {
        assert!(tracer.0.try_wait().unwrap().is_none(), "SIGHUP ended the exporter");
        http_get(&addr, "/metrics", &[]).and_then(|r| reloaded_at(&r.body)).filter(|t| *t > loaded)
    });
    let out = run(&required_program("kill", "procps"), &["-TERM", &exporter]);
    assert!(out.status.success(), "kill: {}", text(&out));
    let status = wait_for("the exporter to exit", Duration::from_secs(10), || tracer.0.try_wait().unwrap());
    assert!(status.success(), "the traced exporter ended with {status}");

    let used = traced_calls(&std::fs::read_to_string(&trace).unwrap());
    assert!(used.contains("ioctl") && used.contains("accept4") && used.contains("connect"), "trace: {used:?}");
    // glibc's setrlimit is the prlimit64 system call, which @system-service allows (setrlimit itself is in the
    // denied @resources).
    assert!(used.contains("prlimit64"), "the exporter did not raise its open-file limit: {used:?}");
    let outside: Vec<&String> = used.iter().filter(|c| !allowed.contains(*c) || denied.contains(*c)).collect();
    assert!(outside.is_empty(), "system calls the unit's SystemCallFilter refuses: {outside:?}");
}

// ---------------------------------------------------------------------------------------------------------------
// Kubernetes

/// `kubectl kustomize DIR` (DIR relative to the repository root), as parsed documents.
fn kustomize(dir: &str) -> (String, Vec<Value>) {
    let kubectl = required_program("kubectl", "kubectl");
    let out = Command::new(kubectl).args(["kustomize", dir]).current_dir(root()).output().unwrap();
    assert!(out.status.success(), "kubectl kustomize {dir}:\n{}", text(&out));
    let yaml = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml).unwrap_or_else(|e| panic!("{dir}: {e}\n{yaml}"));
    (yaml, docs)
}

/// The Python with kubernetes-validate: $BMS_PYTHON, else the venv scripts/test.sh makes under target/py.
fn python() -> PathBuf {
    crate::util::venv_program("BMS_PYTHON", "python", Some("kubernetes_validate"), "kubernetes-validate==1.37.0")
}

/// `kubernetes-validate --strict` (unknown fields are errors) on a rendered manifest.
fn kubernetes_validate(scratch: &Scratch, yaml: &str) -> Output {
    let file = scratch.write("rendered.yaml", yaml);
    run(&python(), &["-m", "kubernetes_validate", "--strict", file.to_str().unwrap()])
}

fn assert_validates(scratch: &Scratch, yaml: &str) {
    let out = kubernetes_validate(scratch, yaml);
    let report = text(&out);
    assert!(out.status.success(), "kubernetes-validate --strict:\n{report}");
    for resource in ["configmap/bms-exporter-config", "service/bms-exporter", "deployment/bms-exporter"] {
        assert!(report.contains(&format!("passed for resource {resource}")), "{resource} not validated:\n{report}");
    }
    // The ServiceMonitor is a CRD the tool has no schema for: it only warns, and the fields are checked below.
    let warnings: Vec<&str> = report.lines().filter(|l| l.starts_with("WARN")).collect();
    assert!(warnings.iter().all(|l| l.contains("kind ServiceMonitor")), "unexpected warnings: {warnings:?}");
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}");
    found[0]
}

/// Every label of `selector` is on `labels` with the same value.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().expect("a selector map");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels[k] == *v)
}

/// The exporter config the ConfigMap carries, through the real `bms_exporter config check`.
fn config_check(scratch: &Scratch, docs: &[Value]) -> String {
    let config = kind(docs, "ConfigMap")["data"]["config.yaml"].as_str().expect("data.config.yaml").to_owned();
    let file = scratch.write("config.yaml", &config);
    let out = run(Path::new(BIN), &["config", "check", file.to_str().unwrap()]);
    assert!(out.status.success(), "bms_exporter config check on the ConfigMap's config:\n{}", text(&out));
    config
}

/// What both variants must keep: non-root, read-only, no capabilities, probes, resources, and the Service and
/// ServiceMonitor pointing at the pod's port.
fn assert_wiring_and_hardening(docs: &[Value]) {
    let deployment = kind(docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert!(selects(&deployment["spec"]["selector"]["matchLabels"], pod_labels));
    assert_eq!(deployment["spec"]["replicas"], 1, "one poller per bus");

    let security = &pod["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert!(security["runAsUser"].as_u64().is_some_and(|uid| uid > 0), "runAsUser: {}", security["runAsUser"]);
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");

    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(security["capabilities"]["add"].is_null() && security["privileged"] != true);

    let port = &container["ports"][0];
    assert_eq!((port["name"].as_str(), port["containerPort"].as_u64()), (Some("http-metrics"), Some(10485)));
    for (probe, path) in [("livenessProbe", "/-/healthy"), ("readinessProbe", "/-/ready")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert!(get["port"] == "http-metrics" || get["port"] == 10485, "{probe} port {}", get["port"]);
    }
    for (kind, want) in [("requests", "16Mi"), ("limits", "32Mi")] {
        assert_eq!(container["resources"][kind]["memory"], want, "memory {kind}");
        assert!(container["resources"][kind]["cpu"].is_string(), "cpu {kind}");
    }

    // The config: the ConfigMap mounted at /etc/bms_exporter, and --config naming its key there.
    let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(args.contains(&"--config=/etc/bms_exporter/config.yaml"), "args: {args:?}");
    assert!(args.contains(&"--web.listen-address=:10485"), "args: {args:?}");
    let mount = container["volumeMounts"].as_array().unwrap().iter().find(|m| m["mountPath"] == "/etc/bms_exporter");
    let mount = mount.expect("a mount at /etc/bms_exporter");
    let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).expect("its volume");
    assert_eq!(volume["configMap"]["name"], kind(docs, "ConfigMap")["metadata"]["name"]);
    assert!(kind(docs, "ConfigMap")["data"]["config.yaml"].is_string());

    // The Service selects the pod and names the port; the ServiceMonitor selects the Service and scrapes it.
    let service = kind(docs, "Service");
    assert!(selects(&service["spec"]["selector"], pod_labels), "the Service does not select the pod");
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(service_port["name"], "http-metrics");
    assert_eq!(service_port["port"], 10485);
    assert!(service_port["targetPort"] == "http-metrics" || service_port["targetPort"] == 10485);

    let monitor = kind(docs, "ServiceMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    let service_labels = &service["metadata"]["labels"];
    assert!(selects(&monitor["spec"]["selector"]["matchLabels"], service_labels), "ServiceMonitor misses it");
    let endpoints = monitor["spec"]["endpoints"].as_array().expect("endpoints");
    assert!(!endpoints.is_empty());
    for endpoint in endpoints {
        assert_eq!(endpoint["port"], service_port["name"], "the ServiceMonitor names another port");
        assert_eq!(endpoint["path"], "/metrics");
    }
    let image = container["image"].as_str().unwrap();
    assert!(image.contains("bms_exporter:"), "kustomize's images: should pin a tag: {image}");
}

#[test]
fn the_kubernetes_base_renders_validates_and_reaches_devices_over_tcp_only() {
    let (yaml, docs) = kustomize("deploy/kubernetes");
    let scratch = Scratch::in_dir(&root().join("target"), "deploy-test-k8s-base");
    assert_validates(&scratch, &yaml);
    assert_wiring_and_hardening(&docs);
    let config = config_check(&scratch, &docs);
    assert!(config.contains("tcp:") && !config.contains("serial:"), "the base needs no host device:\n{config}");
    let pod = &kind(&docs, "Deployment")["spec"]["template"]["spec"];
    assert!(
        pod["nodeSelector"].is_null() && pod["volumes"].as_array().unwrap().iter().all(|v| v["hostPath"].is_null())
    );

    // --strict really is strict: a misspelt field in the same render fails.
    let out = kubernetes_validate(&scratch, &yaml.replace("readOnlyRootFilesystem", "readOnlyRootFS"));
    assert!(!out.status.success(), "a misspelt field should fail:\n{}", text(&out));
}

#[test]
fn the_host_serial_component_pins_the_node_and_gets_the_device_without_privileges() {
    // The Component cannot be rendered from inside deploy/kubernetes (kustomize sees a cycle), so this overlay
    // is the one its header tells users to write.
    let scratch = Scratch::in_dir(&root().join("target"), "deploy-test-k8s-serial");
    scratch.write(
        "kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         resources:\n  - ../../deploy/kubernetes\ncomponents:\n  - ../../deploy/kubernetes/host-serial\n",
    );
    let dir = scratch.0.strip_prefix(root()).unwrap().to_str().unwrap().to_owned();
    let (yaml, docs) = kustomize(&dir);
    assert_validates(&scratch, &yaml);
    assert_wiring_and_hardening(&docs);
    let config = config_check(&scratch, &docs);
    assert!(config.contains("serial: /dev/ttyUSB0"), "{config}");

    let pod = &kind(&docs, "Deployment")["spec"]["template"]["spec"];
    assert!(pod["nodeSelector"].as_object().is_some_and(|s| !s.is_empty()), "no nodeSelector");
    let groups = pod["securityContext"]["supplementalGroups"].as_array().expect("supplementalGroups");
    assert!(groups.contains(&Value::from(20)), "dialout (20) missing: {groups:?}");
    let resources = &pod["containers"][0]["resources"];
    assert_eq!(resources["limits"]["squat.ai/serial"], "1", "the device plugin grants the device");
    assert_eq!(resources["limits"]["memory"], "32Mi", "the patch must not drop the base's limits");
}

// ---------------------------------------------------------------------------------------------------------------
// Containerfile

#[test]
fn the_containerfile_builds_locked_in_one_stage_and_runs_non_root_in_another() {
    let file = read("deploy/container/Containerfile");
    let lines: Vec<&str> = file.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let instruction = |name: &str| -> Vec<&str> {
        lines.iter().filter_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' '))).collect()
    };

    let from = instruction("FROM");
    assert_eq!(from.len(), 2, "two stages: {from:?}");
    assert!(from[0].starts_with("docker.io/library/rust:1.95-bookworm AS "), "builder: {from:?}");
    let builder = from[0].rsplit(' ').next().unwrap();
    assert!(
        from[1].contains("distroless") || from[1].contains("debian:bookworm-slim"),
        "a small runtime image: {}",
        from[1]
    );
    assert!(
        instruction("RUN").iter().any(|r| r.contains("cargo build --release --locked")),
        "the build must be --release --locked"
    );

    // The binary copied out of the builder is the one ENTRYPOINT runs.
    let copy = instruction("COPY");
    let binary = copy.iter().find(|c| c.starts_with(&format!("--from={builder} "))).expect("a COPY --from the builder");
    let destination = binary.rsplit(' ').next().unwrap();
    assert!(binary.contains("target/release/bms_exporter"), "{binary}");
    assert_eq!(instruction("ENTRYPOINT"), [format!("[\"{destination}\"]").as_str()]);

    // The last USER is numeric and not root, so Kubernetes' runAsNonRoot can check it without /etc/passwd.
    let user = *instruction("USER").last().expect("a USER");
    let uid = user.split(':').next().unwrap();
    assert!(uid.parse::<u32>().is_ok_and(|uid| uid != 0), "USER {user}");
    assert_eq!(instruction("EXPOSE"), ["10485"]);
    assert!(instruction("LABEL").iter().any(|l| l.contains("org.opencontainers.image.title=")));

    // Every file copied from the build context exists, and the ignore file lets exactly those in.
    let ignore = read("deploy/container/Containerfile.dockerignore");
    for source in copy.iter().filter(|c| !c.starts_with("--from=")).flat_map(|c| {
        let words: Vec<&str> = c.split_whitespace().collect();
        words[..words.len() - 1].to_vec()
    }) {
        assert!(root().join(source).exists(), "COPY {source}: no such file");
        let allowed = format!("!{}", source.trim_end_matches('/'));
        assert!(
            ignore.lines().any(|l| l.trim_end_matches('/') == allowed),
            "{source} is copied but the ignore file keeps it out"
        );
    }
    assert!(ignore.lines().any(|l| l == "*"), "the ignore file should start from nothing");
    // The build script stamps the revision; without .git in the context it takes it from the build argument.
    assert!(copy.iter().any(|c| c.split_whitespace().any(|w| w == "build.rs")), "build.rs is not copied");
    assert!(instruction("ARG").contains(&"BMS_EXPORTER_REVISION"), "no ARG BMS_EXPORTER_REVISION");

    // The config the image carries by default passes the exporter's own check.
    assert!(copy.contains(&"examples/config.yaml /etc/bms_exporter/config.yaml"));
    let out = run(Path::new(BIN), &["config", "check", root().join("examples/config.yaml").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn the_trace_reader_takes_call_names_whatever_the_pid_width() {
    let log = "2611  execve(\"/bin/x\", [], 0x0 /* 1 var */) = 0\n\
               24566 openat(AT_FDCWD, \"/etc\", O_RDONLY) = 3\n\
               917   <... read resumed>\"x\", 1) = 1\n\
               917   +++ exited with 0 +++\n";
    let calls: Vec<String> = traced_calls(log).into_iter().collect();
    assert_eq!(calls, ["execve", "openat", "read"]);
}
