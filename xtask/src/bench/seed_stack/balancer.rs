//! The balancer of the seed-stack section: `deploy/swarm/haproxy.cfg` made to run outside Swarm,
//! and what its statistics page says about each server.
//!
//! The configuration is derived from the deployed file rather than written beside it, so the
//! section measures the balancer the stack runs: the same global settings, timeouts, retries,
//! `roundrobin`, check intervals and access-log rules. Only what needs Swarm is replaced: the
//! replicas found through Docker's DNS (`resolvers`, `server-template`) become three `server`
//! lines naming the containers, the checks ask `GET /` (the one route all three apps have), and
//! the HTTP/2 backend, which the HTTP/1.1 load never reaches, is left out. A statistics listener
//! on a port of its own is added: the bench reads it before measuring, never under load.

use anyhow::{Context, Result, bail, ensure};

/// Where the statistics are served (its own port: the measured frontend is left as deployed).
pub(crate) const STATS_PORT: u16 = 8404;
pub(crate) const STATS_PATH: &str = "/stats;csv";
/// The backend the frontend sends HTTP/1.1 requests to.
pub(crate) const BACKEND: &str = "web";

/// The deployed configuration with the replicas listed statically as `servers` (`host:port`).
pub(crate) fn config(deployed: &str, servers: &[String]) -> Result<String> {
    ensure!(!servers.is_empty(), "no servers to balance over");
    let mut out: Vec<String> = vec![
        "# Written by `cargo xtask bench --only seed-stack` from deploy/swarm/haproxy.cfg: the same"
            .into(),
        "# balancer, with the replicas listed by container name instead of found through Swarm's DNS."
            .into(),
        String::new(),
    ];
    // Column-0 comments and blank lines belong to the section that follows them.
    let mut pending: Vec<&str> = Vec::new();
    let mut keep = false;
    let mut seen_section = false;
    let (mut checks, mut templates, mut h2_routes) = (0, 0, 0);
    for line in deployed.lines() {
        if line.starts_with(|c: char| c.is_ascii_alphabetic()) {
            keep = !(line.starts_with("resolvers") || line.starts_with("backend web-h2"));
            if keep && seen_section {
                out.extend(pending.iter().map(|l| l.to_string()));
            }
            pending.clear();
            seen_section = true;
            if keep {
                out.push(line.to_owned());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            pending.push(line);
            continue;
        }
        if !keep {
            pending.clear();
            continue;
        }
        out.extend(pending.drain(..).map(str::to_owned));
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["option", "httpchk", "GET", _] => {
                checks += 1;
                out.push("    option httpchk GET /".into());
            }
            ["server-template", ..] => {
                templates += 1;
                for (i, server) in servers.iter().enumerate() {
                    out.push(format!("    server web{} {server} check", i + 1));
                }
            }
            ["use_backend", "web-h2", ..] => {
                h2_routes += 1;
                drop_trailing_comments(&mut out);
            }
            _ => out.push(line.to_owned()),
        }
    }
    if keep {
        out.extend(pending.iter().map(|l| l.to_string()));
    }
    if (checks, templates, h2_routes) != (1, 1, 1) {
        bail!(
            "deploy/swarm/haproxy.cfg no longer has the one `option httpchk`, `server-template` and \
             `use_backend web-h2` of its `web` backend and frontend (found {checks}, {templates}, \
             {h2_routes}): the seed-stack section's copy of it needs updating"
        );
    }
    out.extend(
        [
            "",
            "# Read by the bench before it measures (every server UP, each one chosen), never under load.",
            "frontend stats",
            &format!("    bind :{STATS_PORT}"),
            "    http-request set-log-level silent",
            "    stats enable",
            "    stats uri /stats",
        ]
        .map(str::to_owned),
    );
    let mut text = out.join("\n");
    text.push('\n');
    Ok(text)
}

/// Removes the indented comment lines at the end of `out`: they explained a line left out.
fn drop_trailing_comments(out: &mut Vec<String>) {
    while out.last().is_some_and(|l| l.trim_start().starts_with('#')) {
        out.pop();
    }
}

/// One server of a backend, as the statistics page reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerStat {
    pub(crate) name: String,
    /// `UP`, `DOWN`, `UP 1/2` (going down), `MAINT`, …
    pub(crate) status: String,
    /// How many times the balancer chose this server.
    pub(crate) chosen: u64,
    /// The last health check's outcome: `L7OK` when the server answered as expected.
    pub(crate) last_check: String,
}

impl ServerStat {
    /// UP, and by a check it passed rather than by HAProxy's assumption about a new server.
    pub(crate) fn passed(&self) -> bool {
        self.status == "UP" && self.last_check == "L7OK"
    }
}

/// The servers of `backend` in HAProxy's CSV statistics, whose first line names the columns
/// (`# pxname,svname,...`); the backend's and frontends' own rows are not servers.
pub(crate) fn servers(csv: &str, backend: &str) -> Result<Vec<ServerStat>> {
    let mut lines = csv.lines();
    let header = lines
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .context("HAProxy's statistics have no `# pxname,...` header")?;
    let columns: Vec<&str> = header.split(',').collect();
    let column = |name: &str| {
        columns
            .iter()
            .position(|c| *c == name)
            .with_context(|| format!("HAProxy's statistics have no `{name}` column"))
    };
    let (proxy, server, status, chosen, check) = (
        column("pxname")?,
        column("svname")?,
        column("status")?,
        column("lbtot")?,
        column("check_status")?,
    );
    let mut found = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').collect();
        let field = |i: usize| fields.get(i).copied().unwrap_or("");
        if field(proxy) != backend || matches!(field(server), "FRONTEND" | "BACKEND") {
            continue;
        }
        found.push(ServerStat {
            name: field(server).to_owned(),
            status: field(status).to_owned(),
            chosen: field(chosen)
                .parse()
                .with_context(|| format!("lbtot of {}: {:?}", field(server), field(chosen)))?,
            last_check: field(check).trim_start_matches("* ").to_owned(),
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployed() -> String {
        std::fs::read_to_string(crate::project_root().join("deploy/swarm/haproxy.cfg"))
            .expect("deploy/swarm/haproxy.cfg")
    }

    fn three() -> Vec<String> {
        (1..=3).map(|i| format!("replica-{i}:5000")).collect()
    }

    #[test]
    fn the_deployed_balancer_lists_the_replicas_by_name_and_keeps_its_settings() {
        let cfg = config(&deployed(), &three()).expect("the deployed file converts");
        for server in [
            "    server web1 replica-1:5000 check",
            "    server web2 replica-2:5000 check",
            "    server web3 replica-3:5000 check",
        ] {
            assert!(cfg.contains(server), "{server} missing:\n{cfg}");
        }
        // What needs Swarm is gone; the checks ask the route every app has.
        for gone in [
            "resolvers",
            "server-template",
            "web-h2",
            "127.0.0.11",
            "/readyz",
        ] {
            assert!(!cfg.contains(gone), "{gone} still there:\n{cfg}");
        }
        assert!(cfg.contains("    option httpchk GET /\n"), "{cfg}");
        // The substance of the deployed balancer stays.
        for kept in [
            "balance roundrobin",
            "retries 3",
            "option redispatch 1",
            "retry-on conn-failure empty-response response-timeout",
            "timeout connect 1s",
            "timeout server 5s",
            "timeout http-keep-alive 10s",
            "default-server inter 1s fastinter 500ms downinter 1s fall 2 rise 1",
            "http-response set-log-level silent if { status lt 400 }",
            ".if streq(\"$ACCESS_LOG\",all)",
            "bind :8080",
            "maxconn 4096",
        ] {
            assert!(cfg.contains(kept), "{kept} lost:\n{cfg}");
        }
        assert_eq!(cfg.matches("\nbackend ").count(), 1, "{cfg}");
        assert!(cfg.contains(&format!("bind :{STATS_PORT}")), "{cfg}");
    }

    #[test]
    fn a_deployed_file_without_its_server_template_is_refused() {
        let text = deployed().replace("server-template", "# server-template");
        let err = config(&text, &three()).expect_err("nothing to replace");
        assert!(format!("{err}").contains("needs updating"), "{err}");
    }

    #[test]
    fn comments_of_a_left_out_section_go_with_it() {
        let text = "global\n    maxconn 1\n\n# the resolvers say\nresolvers docker\n    nameserver dns 1.2.3.4:53\n\n\
                    # the backend says\nbackend web\n    option httpchk GET /readyz\n    server-template web 3 web:5000 check\n\
                    frontend http\n    # h2 goes elsewhere\n    use_backend web-h2 if { req.ver 2.0 }\n    default_backend web\n";
        let cfg = config(text, &["a:1".to_owned()]).expect("converts");
        assert!(!cfg.contains("the resolvers say"), "{cfg}");
        assert!(!cfg.contains("h2 goes elsewhere"), "{cfg}");
        assert!(cfg.contains("# the backend says\nbackend web\n"), "{cfg}");
        assert!(cfg.contains("    server web1 a:1 check\n"), "{cfg}");
        assert!(cfg.contains("    default_backend web\n"), "{cfg}");
    }

    #[test]
    fn the_statistics_give_each_servers_state_and_how_often_it_was_chosen() {
        let csv = "# pxname,svname,qcur,status,lbtot,check_status,\n\
                   http,FRONTEND,,OPEN,,,\n\
                   web,web1,0,UP,12,L7OK,\n\
                   web,web2,0,DOWN,0,L4CON,\n\
                   web,web3,0,UP 1/2,7,* L7STS,\n\
                   web,BACKEND,0,UP,19,,\n\
                   stats,FRONTEND,,OPEN,,,\n";
        assert_eq!(
            servers(csv, "web").expect("parses"),
            vec![
                ServerStat {
                    name: "web1".into(),
                    status: "UP".into(),
                    chosen: 12,
                    last_check: "L7OK".into(),
                },
                ServerStat {
                    name: "web2".into(),
                    status: "DOWN".into(),
                    chosen: 0,
                    last_check: "L4CON".into(),
                },
                ServerStat {
                    name: "web3".into(),
                    status: "UP 1/2".into(),
                    chosen: 7,
                    last_check: "L7STS".into(),
                },
            ]
        );
        let parsed = servers(csv, "web").expect("parses");
        let passed: Vec<bool> = parsed.iter().map(ServerStat::passed).collect();
        assert_eq!(passed, [true, false, false]);
        assert!(servers("pxname,svname\n", "web").is_err());
        assert!(servers("# pxname,svname,status\n", "web").is_err());
    }
}
