//! The harness's hosts: one network namespace each, linked by veth pairs
//! to a bridge in a switch namespace of their own, with addresses in
//! 198.18.0.0/24 (the range set aside for benchmarking networks, RFC 2544).
//! Nothing here touches the caller's namespace: no interface, no route, no
//! rule, and no traffic leaves these namespaces.
//!
//! Faults are nftables rules in a table of the harness's own
//! (`inet spfault`) inside a host's namespace: a partition drops a peer's
//! addresses both ways (or one way), loss drops a share of packets at
//! random. [`Net::heal`] deletes the table everywhere; dropping the
//! [`Net`] heals and deletes every namespace, so a failed run leaves
//! nothing behind.

use anyhow::{bail, Context};
use std::net::Ipv4Addr;
use std::process::Stdio;

/// One host: its name in scenarios, its namespace and address.
#[derive(Clone, Debug)]
pub struct Host {
    /// Its name in scenarios (`redis`, `fe1`, `be1`, `client`…).
    pub name: String,
    /// Its network namespace.
    pub ns: String,
    /// Its address.
    pub ip: Ipv4Addr,
}

/// The hosts of one run, torn down when dropped.
#[derive(Debug)]
pub struct Net {
    switch: String,
    hosts: Vec<Host>,
}

/// Runs a command to its end; fails with what it printed.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether this process can build namespaces and rules (root, `ip`, `nft`).
pub fn available() -> Result<(), String> {
    for tool in ["ip", "nft"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!(
                "`{tool}` is not installed (Debian: iproute2, nftables)"
            ));
        }
    }
    static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let probe = format!(
        "sp{}xprobe{}",
        std::process::id(),
        PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    match run("ip", &["netns", "add", &probe], None) {
        Ok(()) => {
            let _ = run("ip", &["netns", "del", &probe], None);
            Ok(())
        }
        Err(e) => Err(format!(
            "cannot create a network namespace (root is needed): {e}"
        )),
    }
}

impl Net {
    /// Creates a host per name, all on one bridge, numbered from
    /// 198.18.0.10. Namespace names carry this process's id and `tag`.
    pub fn create(tag: &str, names: &[&str]) -> anyhow::Result<Net> {
        clean_up_after_dead_runs();
        let prefix = format!("sp{}x{tag}", std::process::id());
        let switch = format!("{prefix}-sw");
        let mut net = Net {
            switch: switch.clone(),
            hosts: Vec::new(),
        };
        run("ip", &["netns", "add", &switch], None)?;
        run(
            "ip",
            &["-n", &switch, "link", "add", "br0", "type", "bridge"],
            None,
        )?;
        run("ip", &["-n", &switch, "link", "set", "br0", "up"], None)?;
        for (i, name) in names.iter().enumerate() {
            let ns = format!("{prefix}-{name}");
            let ip = Ipv4Addr::new(198, 18, 0, 10 + u8::try_from(i).context("too many hosts")?);
            run("ip", &["netns", "add", &ns], None)?;
            net.hosts.push(Host {
                name: name.to_string(),
                ns: ns.clone(),
                ip,
            });
            let port = format!("p{i}");
            run(
                "ip",
                &[
                    "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                    "netns", &switch,
                ],
                None,
            )?;
            run(
                "ip",
                &["-n", &switch, "link", "set", &port, "master", "br0"],
                None,
            )?;
            run("ip", &["-n", &switch, "link", "set", &port, "up"], None)?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"], None)?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"], None)?;
            run(
                "ip",
                &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
                None,
            )?;
        }
        Ok(net)
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> anyhow::Result<&Host> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .with_context(|| format!("no host {name}"))
    }

    /// A command that runs `program` in `host`'s namespace (its PID is the
    /// program's: `ip netns exec` execs it).
    pub fn command(&self, host: &str, program: &str) -> anyhow::Result<tokio::process::Command> {
        let mut c = tokio::process::Command::new("ip");
        c.args(["netns", "exec", &self.host(host)?.ns, program]);
        Ok(c)
    }

    fn rules(&self, host: &str, input: &[String], output: &[String]) -> anyhow::Result<()> {
        let ns = &self.host(host)?.ns;
        let mut text = String::from("table inet spfault {\n");
        text.push_str("  chain input {\n    type filter hook input priority 0;\n");
        for r in input {
            text.push_str(&format!("    {r}\n"));
        }
        text.push_str("  }\n  chain output {\n    type filter hook output priority 0;\n");
        for r in output {
            text.push_str(&format!("    {r}\n"));
        }
        text.push_str("  }\n}\n");
        run("ip", &["netns", "exec", ns, "nft", "-f", "-"], Some(&text))
    }

    /// Cuts `a` off from `b`: both ways, or only what `a` sends to `b`.
    pub fn partition(&self, a: &str, b: &str, one_way: bool) -> anyhow::Result<()> {
        let (ia, ib) = (self.host(a)?.ip, self.host(b)?.ip);
        self.rules(a, &[], &[format!("ip daddr {ib} drop")])?;
        self.rules(b, &[format!("ip saddr {ia} drop")], &[])?;
        if !one_way {
            self.rules(a, &[format!("ip saddr {ib} drop")], &[])?;
            self.rules(b, &[], &[format!("ip daddr {ia} drop")])?;
        }
        Ok(())
    }

    /// Drops `percent` % of the packets `host` sends and receives, at random.
    pub fn loss(&self, host: &str, percent: u8) -> anyhow::Result<()> {
        let rule = format!("numgen random mod 100 < {} drop", percent.min(100));
        self.rules(
            host,
            std::slice::from_ref(&rule),
            std::slice::from_ref(&rule),
        )
    }

    /// Removes every fault rule from every host.
    pub fn heal(&self) {
        for h in &self.hosts {
            // No table: nothing to heal there.
            let _ = run(
                "ip",
                &[
                    "netns", "exec", &h.ns, "nft", "delete", "table", "inet", "spfault",
                ],
                None,
            );
        }
    }
}

/// The namespaces of harness runs whose process is gone (killed before
/// it could clean up): their processes are killed by PID, then the
/// namespaces deleted.
fn clean_up_after_dead_runs() {
    let Ok(out) = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("sp")
            .and_then(|rest| rest.split_once('x'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(pids) = std::process::Command::new("ip")
            .args(["netns", "pids", name])
            .output()
        {
            for p in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", p])
                    .status();
            }
        }
        let _ = run("ip", &["netns", "del", name], None);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.heal();
        for h in &self.hosts {
            let _ = run("ip", &["netns", "del", &h.ns], None);
        }
        let _ = run("ip", &["netns", "del", &self.switch], None);
    }
}
