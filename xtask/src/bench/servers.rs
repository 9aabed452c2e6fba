//! The servers under test: how each is built or set up, how it is started (pinned to CPU 0),
//! how long it takes from exec to its first `200`, and how it is stopped.
//!
//! Every server answers `GET /` with `Hello World!` on its own fixed loopback port, so the
//! command lines in the results file can be pasted as they are.

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

use super::procfs;

/// The CPU every server runs on; the load generator gets the other one.
pub(crate) const SERVER_CPU: usize = 0;
pub(crate) const LOAD_CPU: usize = 1;

/// Which implementation a server is: decides the figures that make sense for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Ours,
    Reference,
}

/// Everything needed to start one server and describe it in the results.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// Short name used in tables, charts and `--only`.
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) cwd: Option<PathBuf>,
    pub(crate) port: u16,
    /// The file whose size is the "binary size" (None where it means nothing, e.g. Python).
    pub(crate) binary: Option<PathBuf>,
    /// A note for the results table (version, build, caveat).
    pub(crate) note: String,
    /// Extra arguments that keep the server in one process, for counting it under valgrind
    /// (which is not told to follow forks): nginx's master would otherwise fork the worker.
    pub(crate) one_process_args: Vec<String>,
}

impl Spec {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The command line as a person would type it to reproduce the run.
    pub(crate) fn command_line(&self) -> String {
        let mut line = String::new();
        if let Some(cwd) = &self.cwd {
            line.push_str(&format!("cd {} && ", display_path(cwd)));
        }
        for (k, v) in &self.env {
            line.push_str(&format!("{k}={v} "));
        }
        line.push_str(&format!(
            "taskset -c {SERVER_CPU} {}",
            display_path(&self.program)
        ));
        for a in &self.args {
            line.push(' ');
            if a.contains([' ', ';']) {
                line.push_str(&format!("'{a}'"));
            } else {
                line.push_str(a);
            }
        }
        line
    }

    /// The same server with extra arguments (e.g. a larger connection limit for one run).
    pub(crate) fn with_args(&self, extra: &[&str]) -> Spec {
        let mut s = self.clone();
        s.args.extend(extra.iter().map(|a| (*a).to_owned()));
        s
    }

    /// The same server with an extra environment variable.
    pub(crate) fn with_env(&self, key: &str, value: &str) -> Spec {
        let mut s = self.clone();
        s.env.push((key.to_owned(), value.to_owned()));
        s
    }
}

/// Paths inside the repository are shown relative to it, the rest as they are.
pub(crate) fn display_path(p: &Path) -> String {
    let root = crate::project_root();
    match p.strip_prefix(&root) {
        Ok(rel) => rel.display().to_string(),
        Err(_) => p.display().to_string(),
    }
}

/// The cargo target directory (helpers share one through `CARGO_TARGET_DIR`).
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::project_root().join("target"))
}

/// Scratch space for everything the bench makes (venv, Go binary, nginx prefix, logs).
pub(crate) fn work_dir() -> PathBuf {
    target_dir().join("bench")
}

pub(crate) const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// Ports: fixed so the reproduction lines are exact. Flask's is the tutorial's own (`app.run()`
/// binds 127.0.0.1:5000 and the app as written takes no port argument).
const PORT_OURS_GLIBC: u16 = 18001;
const PORT_OURS_MUSL: u16 = 18002;
const PORT_GO: u16 = 18003;
const PORT_NGINX: u16 = 18004;
/// nginx's cleartext HTTP/2 listener, in the same process as its HTTP/1.1 one.
pub(crate) const PORT_NGINX_H2C: u16 = 18014;
const PORT_GUNICORN: u16 = 18005;
const PORT_FLASK: u16 = 5000;
const PORT_AXUM: u16 = 18006;
const ADMIN_PORT_BASE: u16 = 19000;

/// Bare axum (bench/reference/axum): the framework's floor, built with the service's release
/// profile into its own target directory. Returns the binary.
pub(crate) fn build_bare_axum(sh: &Shell, log: &mut Vec<String>) -> Result<PathBuf> {
    let root = crate::project_root();
    let axum_dir = work_dir().join("axum-target");
    let axum_manifest = root.join("bench/reference/axum/Cargo.toml");
    sh.change_dir(&root);
    {
        let _dir = sh.push_env("CARGO_TARGET_DIR", &axum_dir);
        cmd!(
            sh,
            "cargo build --release --locked --manifest-path {axum_manifest}"
        )
        .run()?;
    }
    log.push(format!(
        "CARGO_TARGET_DIR={} cargo build --release --locked --manifest-path bench/reference/axum/Cargo.toml",
        display_path(&axum_dir)
    ));
    Ok(axum_dir.join("release/axum-hello"))
}

/// How bare axum runs: on its own port, given by `PORT`.
pub(crate) fn bare_axum(bin: &Path) -> Spec {
    Spec {
        name: "axum-bare",
        kind: Kind::Reference,
        program: bin.to_owned(),
        args: vec![],
        env: vec![("PORT".into(), PORT_AXUM.to_string())],
        cwd: None,
        port: PORT_AXUM,
        binary: Some(bin.to_owned()),
        note: "axum 0.8 `Router::new().route(\"/\", get(..))` + `axum::serve`, no middleware, glibc malloc: the framework's floor".into(),
        one_process_args: vec![],
    }
}

/// How ours runs: every middleware on, access log off, and the allocator settings the image
/// sets (`ENV MIMALLOC_*` in deploy/Dockerfile), so its memory is the image's.
pub(crate) fn ours(name: &'static str, bin: &Path, port: u16, note: &str) -> Spec {
    Spec {
        name,
        kind: Kind::Ours,
        program: bin.to_owned(),
        args: vec![
            "serve".into(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--admin-port".into(),
            (ADMIN_PORT_BASE + port % 100).to_string(),
            "--access-log".into(),
            "false".into(),
            "--instance-name".into(),
            "bench".into(),
        ],
        env: image_allocator_settings(),
        cwd: None,
        port,
        binary: Some(bin.to_owned()),
        note: note.into(),
        one_process_args: vec![],
    }
}

/// The `MIMALLOC_*` variables deploy/Dockerfile sets.
fn image_allocator_settings() -> Vec<(String, String)> {
    let dockerfile = crate::project_root().join("deploy/Dockerfile");
    let text = fs::read_to_string(dockerfile).unwrap_or_default();
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(str::split_whitespace)
        .map(|word| word.trim_end_matches('\\'))
        .filter_map(|word| word.split_once('='))
        .filter(|(name, _)| name.starts_with("MIMALLOC_"))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// The port ours listens on in the glibc build's runs.
pub(crate) const PORT_OURS: u16 = PORT_OURS_GLIBC;

/// Every server's name, in the order of the results table.
pub(crate) const NAMES: [&str; 7] = [
    "ours-glibc",
    "ours-musl",
    "nginx",
    "axum-bare",
    "go",
    "gunicorn",
    "flask-dev",
];

/// Builds the servers `wanted` names (ours as glibc and musl release builds, bare axum, the Go
/// reference, the Flask venv; the nginx config) and returns their specs in the order of the
/// results table: a run of one section builds only what it measures.
pub(crate) fn prepare(
    sh: &Shell,
    log: &mut Vec<String>,
    wanted: &dyn Fn(&str) -> bool,
) -> Result<Vec<Spec>> {
    let root = crate::project_root();
    let work = work_dir();
    fs::create_dir_all(&work)?;
    let target = target_dir();

    // Ours: the glibc release build a developer runs, and the musl build that goes into the image.
    // The target directory may be shared with other checkouts, whose builds replace
    // `release/hello-world`; so the build is stamped with this tree's commit, copied out at once,
    // and the copy's `/version` is checked before anything is measured.
    sh.change_dir(&root);
    let commit = tree_commit(sh);
    let _stamp = sh.push_env("HELLO_BUILD_COMMIT", &commit);
    let bin_dir = work.join("bin");
    fs::create_dir_all(&bin_dir)?;
    let glibc = bin_dir.join("hello-world-glibc");
    let musl = bin_dir.join("hello-world-musl");
    // (build target, where the build lands, where it is copied to), for the builds wanted.
    let builds: Vec<(Option<&str>, PathBuf, &PathBuf)> = [
        (
            "ours-glibc",
            None,
            target.join("release/hello-world"),
            &glibc,
        ),
        (
            "ours-musl",
            Some(MUSL_TARGET),
            target.join(MUSL_TARGET).join("release/hello-world"),
            &musl,
        ),
    ]
    .into_iter()
    .filter(|(name, ..)| wanted(name))
    .map(|(_, triple, built, copy)| (triple, built, copy))
    .collect();
    for attempt in 1..=2 {
        for (triple, built, copy) in &builds {
            match triple {
                None => cmd!(sh, "cargo build --release --locked -p hello-world").run()?,
                Some(triple) => cmd!(
                    sh,
                    "cargo build --release --locked -p hello-world --target {triple}"
                )
                .run()?,
            }
            fs::copy(built, copy)?;
        }
        let stamped = builds
            .iter()
            .all(|(_, _, bin)| reports_commit(bin, &commit, &work));
        if stamped {
            break;
        }
        if attempt == 2 {
            bail!(
                "the built binaries do not report commit {commit}: another checkout keeps rebuilding into {}",
                target.display()
            );
        }
    }
    for (triple, _, _) in &builds {
        let target_arg = triple.map_or(String::new(), |t| format!(" --target {t}"));
        log.push(format!(
            "HELLO_BUILD_COMMIT={commit} cargo build --release --locked -p hello-world{target_arg}"
        ));
    }
    if !builds.is_empty() {
        log.push(format!(
            "(copied to {}; answering /version with commit {commit})",
            builds
                .iter()
                .map(|(_, _, bin)| display_path(bin))
                .collect::<Vec<_>>()
                .join(" and ")
        ));
    }

    let axum_bin = if wanted("axum-bare") {
        build_bare_axum(sh, log)?
    } else {
        PathBuf::new()
    };

    // Go: one file, standard library only, so no module download.
    let go_src = root.join("bench/reference/go/main.go");
    let go_bin = work.join("go-hello");
    let mut go_version = String::new();
    if wanted("go") {
        cmd!(sh, "go build -trimpath -o {go_bin} {go_src}").run()?;
        go_version = cmd!(sh, "go version").read().unwrap_or_default();
        log.push(format!(
            "go build -trimpath -o {} bench/reference/go/main.go   # {go_version}",
            display_path(&go_bin)
        ));
    }

    // Flask: a venv with the pinned requirements, rebuilt only when they change.
    let flask_dir = root.join("bench/reference/flask");
    let venv = work.join("flask-venv");
    let reqs = fs::read_to_string(flask_dir.join("requirements.txt"))?;
    let stamp = venv.join("requirements.stamp");
    let flask_wanted = wanted("gunicorn") || wanted("flask-dev");
    if flask_wanted && fs::read_to_string(&stamp).ok().as_deref() != Some(reqs.as_str()) {
        let _ = fs::remove_dir_all(&venv);
        cmd!(sh, "python3 -m venv {venv}").run()?;
        let pip = venv.join("bin/pip");
        let req_file = flask_dir.join("requirements.txt");
        cmd!(
            sh,
            "{pip} install --quiet --disable-pip-version-check -r {req_file}"
        )
        .run()?;
        fs::write(&stamp, &reqs)?;
    }
    let python = venv.join("bin/python");
    let mut py_version = String::new();
    if flask_wanted {
        py_version = cmd!(sh, "{python} --version").read().unwrap_or_default();
        log.push(format!(
            "python3 -m venv {v} && {v}/bin/pip install -r bench/reference/flask/requirements.txt   # {py_version}",
            v = display_path(&venv)
        ));
    }

    // nginx: the config from bench/reference with the scratch prefix and port filled in.
    let prefix = work.join("nginx");
    for d in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        fs::create_dir_all(prefix.join(d))?;
    }
    let conf = fs::read_to_string(root.join("bench/reference/nginx/nginx.conf"))?
        .replace("@PREFIX@", &prefix.display().to_string())
        .replace("@PORT@", &PORT_NGINX.to_string())
        .replace("@H2C_PORT@", &PORT_NGINX_H2C.to_string());
    let conf_path = prefix.join("nginx.conf");
    fs::write(&conf_path, conf)?;
    let nginx_version = cmd!(sh, "nginx -v")
        .ignore_status()
        .read_stderr()
        .unwrap_or_default();

    let specs = vec![
        ours(
            "ours-glibc",
            &glibc,
            PORT_OURS_GLIBC,
            "release build, x86_64-unknown-linux-gnu",
        ),
        ours(
            "ours-musl",
            &musl,
            PORT_OURS_MUSL,
            "release build, x86_64-unknown-linux-musl (the image's binary)",
        ),
        Spec {
            name: "nginx",
            kind: Kind::Reference,
            program: "/usr/sbin/nginx".into(),
            args: vec![
                "-p".into(),
                prefix.display().to_string(),
                "-e".into(),
                prefix.join("error.log").display().to_string(),
                "-c".into(),
                conf_path.display().to_string(),
            ],
            env: vec![],
            cwd: None,
            port: PORT_NGINX,
            binary: Some("/usr/sbin/nginx".into()),
            note: format!(
                "{}, 1 worker, access_log off (binary is dynamically linked)",
                nginx_version.trim()
            ),
            one_process_args: vec!["-g".into(), "master_process off;".into()],
        },
        bare_axum(&axum_bin),
        Spec {
            name: "go",
            kind: Kind::Reference,
            program: go_bin.clone(),
            args: vec![],
            env: vec![("PORT".into(), PORT_GO.to_string())],
            cwd: None,
            port: PORT_GO,
            binary: Some(go_bin),
            note: format!(
                "stdlib net/http, {}",
                go_version.trim().trim_start_matches("go version ")
            ),
            one_process_args: vec![],
        },
        Spec {
            name: "gunicorn",
            kind: Kind::Reference,
            program: venv.join("bin/gunicorn"),
            args: vec![
                "--workers".into(),
                "1".into(),
                "--worker-class".into(),
                "sync".into(),
                "--bind".into(),
                format!("127.0.0.1:{PORT_GUNICORN}"),
                "app:app".into(),
            ],
            env: vec![("PYTHONDONTWRITEBYTECODE".into(), "1".into())],
            cwd: Some(flask_dir.clone()),
            port: PORT_GUNICORN,
            binary: None,
            note: format!("the seed's app.py, 1 sync worker, {}", py_version.trim()),
            one_process_args: vec![],
        },
        Spec {
            name: "flask-dev",
            kind: Kind::Reference,
            program: python,
            args: vec!["app.py".into()],
            env: vec![("PYTHONDONTWRITEBYTECODE".into(), "1".into())],
            cwd: Some(flask_dir),
            port: PORT_FLASK,
            binary: None,
            note: format!(
                "the seed's app.py as written (`python app.py`: Flask's dev server, threaded, logs each request); flask==1.1.2 as the tutorial pins it, its unbounded dependencies pinned to releases it runs with (bench/reference/flask/requirements.txt); {}",
                py_version.trim()
            ),
            one_process_args: vec![],
        },
    ];
    Ok(specs.into_iter().filter(|spec| wanted(spec.name)).collect())
}

/// The service's commit in this tree, with `-dirty` when the service's sources differ from it.
fn tree_commit(sh: &Shell) -> String {
    // The last commit that changed what the binary is built from: commits that touch only the
    // bench or the docs do not force a rebuild of the service.
    let head = cmd!(
        sh,
        "git log -1 --format=%h --abbrev=12 -- crates Cargo.toml Cargo.lock"
    )
    .read()
    .unwrap_or_else(|_| "unknown".into());
    let dirty = cmd!(sh, "git status --porcelain -- crates Cargo.toml Cargo.lock")
        .read()
        .map(|s| !s.trim().is_empty())
        .unwrap_or(false);
    if dirty { format!("{head}-dirty") } else { head }
}

/// Starts `bin` on a scratch port and checks that `GET /version` names `commit`.
fn reports_commit(bin: &Path, commit: &str, work: &Path) -> bool {
    const PORT: u16 = 18099;
    let spec = Spec {
        name: "version-check",
        kind: Kind::Ours,
        program: bin.to_owned(),
        args: [
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "18099",
            "--admin-port",
            "19099",
        ]
        .map(String::from)
        .to_vec(),
        env: vec![],
        cwd: None,
        port: PORT,
        binary: None,
        note: String::new(),
        one_process_args: vec![],
    };
    let Ok((_, server)) = start_timed(&spec, &work.join("version-check.log")) else {
        return false;
    };
    let body = (|| {
        let mut s = TcpStream::connect(("127.0.0.1", PORT)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        Some(text)
    })();
    let _ = server.stop();
    body.is_some_and(|b| b.contains(&format!("\"commit\":\"{commit}\"")))
}

/// A started server; stopping it kills its whole process tree.
#[derive(Debug)]
pub(crate) struct Running {
    child: Child,
}

impl Running {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's live process tree (for CPU and memory).
    pub(crate) fn pids(&self) -> Vec<u32> {
        procfs::tree(self.pid())
    }

    /// Kills the tree: SIGKILL to the root first (so an nginx master or gunicorn arbiter cannot
    /// replace a worker it sees die), then to every descendant found before. No drain is wanted
    /// here, and a worker would outlive a killed master otherwise.
    pub(crate) fn stop(mut self) -> Result<()> {
        let pids = self.pids();
        let _ = self.child.kill();
        if pids.len() > 1 {
            let _ = Command::new("kill")
                .arg("-KILL")
                .args(pids.iter().skip(1).map(u32::to_string))
                .stderr(Stdio::null())
                .status();
        }
        self.child.wait()?;
        // Bounded wait until the descendants are gone too (they hold the listening socket).
        for _ in 0..200 {
            if pids
                .iter()
                .skip(1)
                .all(|p| !Path::new(&format!("/proc/{p}")).exists())
            {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

/// Fails early, with the port named, if something else already listens where a server will.
pub(crate) fn ensure_port_free(port: u16) -> Result<()> {
    match TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(()),
        Err(e) => bail!("port 127.0.0.1:{port} is taken ({e}); stop what listens there and re-run"),
    }
}

/// Starts `spec` with its CPU affinity set to [`SERVER_CPU`]: the spawn happens on a thread
/// pinned there, and a child inherits the affinity of the thread that forked it. (This is what
/// `taskset -c 0` does, without timing taskset's own exec into the startup figure.)
pub(crate) fn spawn(spec: &Spec, log_path: &Path) -> Result<Running> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)?;
    let log_err = log.try_clone()?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    let child = thread::scope(|s| {
        s.spawn(|| {
            pin_current_thread(SERVER_CPU);
            cmd.spawn()
        })
        .join()
        .expect("the spawning thread does not panic")
    })
    .with_context(|| format!("starting {}", spec.program.display()))?;
    Ok(Running { child })
}

/// Pins the calling thread (and whatever it later spawns) to one CPU.
pub(crate) fn pin_current_thread(cpu: usize) {
    // Not looked up through get_core_ids(): that lists only the CPUs the calling thread may
    // already use, and the bench's own thread is pinned to the other one.
    let pinned = core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
    if !pinned {
        eprintln!("bench: could not pin a thread to CPU {cpu}; figures will be noisier");
    }
}

/// Starts `spec` and polls `GET /` in a tight loop until it answers 200; returns the time from
/// the spawn to that answer together with the running server. Bounded: 20 s and 400 000 tries.
pub(crate) fn start_timed(spec: &Spec, log_path: &Path) -> Result<(Duration, Running)> {
    ensure_port_free(spec.port)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], spec.port));
    let started = Instant::now();
    let mut running = spawn(spec, log_path)?;
    for _ in 0..400_000 {
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
        if get_is_200(&addr) {
            return Ok((started.elapsed(), running));
        }
        if let Ok(Some(status)) = running.child.try_wait() {
            bail!(
                "{} exited with {status} before answering; see {}",
                spec.name,
                log_path.display()
            );
        }
        thread::sleep(Duration::from_micros(50));
    }
    let _ = running.stop();
    bail!(
        "{} did not answer 200 within 20 s; see {}",
        spec.name,
        log_path.display()
    )
}

/// One `GET /` on a fresh connection: true only for a `200` status line.
fn get_is_200(addr: &SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_nodelay(true);
    if stream
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    let mut got = 0;
    while got < 12 {
        match stream.read(&mut buf[got..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got += n,
        }
    }
    buf.starts_with(b"HTTP/1.") && &buf[9..12] == b"200"
}
