//! Network namespaces for tests that need a real network between nodes: a set
//! of namespaces joined by veth pairs, deleted (with their links) on drop.
//! Needs root and iproute2; [`Namespaces::create`] says why when it cannot.

use std::process::{Command, Stdio};

use std::io::Write;

/// `ip ARGS`, with its stderr in the error.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Network namespaces named `<prefix><name>`, deleted on drop.
pub struct Namespaces {
    prefix: String,
    names: Vec<String>,
}

impl Namespaces {
    /// Creates one namespace per name, loopback up. `tag` keeps the names of
    /// different tests apart; the process id keeps concurrent runs apart.
    pub fn create(tag: &str, names: &[&str]) -> Result<Self, String> {
        let mut net = Self { prefix: format!("st{tag}{}", std::process::id() % 100_000), names: Vec::new() };
        for name in names {
            let ns = net.name(name);
            ip(&["netns", "add", &ns])?;
            net.names.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// The full name of namespace `name`.
    pub fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A veth pair between namespaces `a` and `b`, with addresses (`IP/LEN`)
    /// on each end, both up. The ends are named `<prefix><a>-<b>` and `<prefix><b>-<a>`
    /// (see [`Namespaces::link`]).
    pub fn connect(&self, a: &str, a_address: &str, b: &str, b_address: &str) -> Result<(), String> {
        let (a_end, b_end) = (self.link(a, b), self.link(b, a));
        ip(&["link", "add", &a_end, "type", "veth", "peer", "name", &b_end])?;
        for (ns, end, address) in [(a, &a_end, a_address), (b, &b_end, b_address)] {
            let ns = self.name(ns);
            ip(&["link", "set", end, "netns", &ns])?;
            ip(&["-n", &ns, "addr", "add", address, "dev", end])?;
            ip(&["-n", &ns, "link", "set", end, "up"])?;
        }
        Ok(())
    }

    /// The name of the veth end in `from` that leads to `to`.
    pub fn link(&self, from: &str, to: &str) -> String {
        format!("{}{from}-{to}", self.prefix)
    }

    /// Runs `program ARGS` inside namespace `ns`, with `stdin` on its standard input.
    pub fn exec(&self, ns: &str, program: &str, args: &[&str], stdin: &str) -> Result<(), String> {
        let ns = self.name(ns);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns, program])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {program} in {ns}: {e}"))?;
        child.stdin.take().expect("stdin is piped").write_all(stdin.as_bytes()).map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} {} in {ns}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends in it, and so both ends of each pair.
        for ns in &self.names {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}
