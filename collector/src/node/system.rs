//! System identity and the collector's own process:
//!
//! | source | families |
//! |--------|----------|
//! | `uname(2)` | `node_uname_info{sysname,release,version,machine,nodename,domainname}` |
//! | `<rootfs>/etc/os-release` (else `<rootfs>/usr/lib/os-release`) | `node_os_info{…12 labels…}`, `node_os_version{id,id_like,name}` |
//! | `/proc/self` (always this process, whatever the proc root) | `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_virtual_memory_max_bytes`, `process_open_fds`, `process_max_fds`, `process_start_time_seconds` |
//!
//! `uname(2)` answers for the kernel this process runs on and its UTS
//! namespace, as node_exporter's does: in a container, give it the host's
//! UTS namespace (`hostNetwork`/`hostUTS`) to see the host's `nodename`.
//! The `process_*` families are what Prometheus client libraries export
//! (node_exporter reports its own process the same way).

use std::path::Path;

use super::{Metric, read_small};

/// `node_uname_info` from `uname(2)`.
pub(crate) fn uname() -> Vec<Metric> {
    let u = rustix::system::uname();
    let s = |c: &std::ffi::CStr| c.to_string_lossy().into_owned();
    vec![Metric {
        name: "node_uname_info".into(),
        labels: vec![
            ("domainname", s(u.domainname())),
            ("machine", s(u.machine())),
            ("nodename", s(u.nodename())),
            ("release", s(u.release())),
            ("sysname", s(u.sysname())),
            ("version", s(u.version())),
        ],
        value: 1.0,
    }]
}

/// The os-release keys node_exporter 1.5 turns into `node_os_info` labels,
/// with their label names.
const OS_LABELS: [(&str, &str); 12] = [
    ("BUILD_ID", "build_id"),
    ("ID", "id"),
    ("ID_LIKE", "id_like"),
    ("IMAGE_ID", "image_id"),
    ("IMAGE_VERSION", "image_version"),
    ("NAME", "name"),
    ("PRETTY_NAME", "pretty_name"),
    ("VARIANT", "variant"),
    ("VARIANT_ID", "variant_id"),
    ("VERSION", "version"),
    ("VERSION_CODENAME", "version_codename"),
    ("VERSION_ID", "version_id"),
];

/// Unquotes an os-release value: `"…"` with `\"`, `\\`, `` \` ``, `\$`
/// escapes, `'…'` literally, or a bare word.
fn unquote(v: &str) -> String {
    let v = v.trim();
    if let Some(inner) = v.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\'
                && let Some(n) = chars.next()
            {
                if !matches!(n, '"' | '\\' | '`' | '$') {
                    out.push('\\');
                }
                out.push(n);
            } else {
                out.push(c);
            }
        }
        out
    } else if let Some(inner) = v.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        inner.to_string()
    } else {
        v.to_string()
    }
}

/// Parses os-release text into `node_os_info` and, when `VERSION_ID` starts
/// with a number, `node_os_version` (its `major.minor` part, e.g. `22.04`).
pub(crate) fn parse_os_release(text: &str) -> Vec<Metric> {
    let mut values = [const { String::new() }; 12];
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else { continue };
        if let Some(i) = OS_LABELS.iter().position(|(key, _)| *key == k.trim()) {
            values[i] = unquote(v);
        }
    }
    let get =
        |label: &str| OS_LABELS.iter().position(|(_, l)| *l == label).map(|i| values[i].clone()).unwrap_or_default();
    let version = major_minor(&get("version_id"));
    let mut out = vec![Metric {
        name: "node_os_info".into(),
        labels: OS_LABELS.iter().zip(values.iter()).map(|((_, l), v)| (*l, v.clone())).collect(),
        value: 1.0,
    }];
    if let Some(v) = version.filter(|v| *v > 0.0) {
        out.push(Metric {
            name: "node_os_version".into(),
            labels: vec![("id", get("id")), ("id_like", get("id_like")), ("name", get("name"))],
            value: v,
        });
    }
    out
}

/// node_exporter's `^[0-9]+\.?[0-9]*` on `VERSION_ID`, as a number.
fn major_minor(v: &str) -> Option<f64> {
    let int_end = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    if int_end == 0 {
        return None;
    }
    let mut end = int_end;
    if v[end..].starts_with('.') {
        end += 1;
        end += v[end..].find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len() - end);
    }
    v[..end].trim_end_matches('.').parse().ok()
}

/// `node_os_*` from `<rootfs>/etc/os-release`, else `<rootfs>/usr/lib/os-release`.
pub(crate) fn os_release(rootfs: &Path) -> Result<Vec<Metric>, String> {
    let text =
        read_small(&rootfs.join("etc/os-release")).or_else(|_| read_small(&rootfs.join("usr/lib/os-release")))?;
    Ok(parse_os_release(&text))
}

/// The collector's own `process_*` metrics, from `/proc/self`.
pub(crate) fn process(user_hz: f64, boot_time: Option<f64>) -> Result<Vec<Metric>, String> {
    let me = procfs::process::Process::myself().map_err(|e| e.to_string())?;
    let stat = me.stat().map_err(|e| e.to_string())?;
    let mut out = vec![
        Metric::plain("process_cpu_seconds_total", (stat.utime + stat.stime) as f64 / user_hz),
        Metric::plain("process_virtual_memory_bytes", stat.vsize as f64),
        Metric::plain("process_resident_memory_bytes", stat.rss as f64 * procfs::page_size() as f64),
    ];
    if let Some(bt) = boot_time {
        out.push(Metric::plain("process_start_time_seconds", bt + stat.starttime as f64 / user_hz));
    }
    if let Ok(n) = me.fd_count() {
        out.push(Metric::plain("process_open_fds", n as f64));
    }
    if let Ok(l) = me.limits() {
        let v = |l: procfs::process::LimitValue| match l {
            procfs::process::LimitValue::Unlimited => u64::MAX as f64,
            procfs::process::LimitValue::Value(v) => v as f64,
        };
        out.push(Metric::plain("process_max_fds", v(l.max_open_files.soft_limit)));
        out.push(Metric::plain("process_virtual_memory_max_bytes", v(l.max_address_space.soft_limit)));
    }
    Ok(out)
}

/// Type and help of this module's families, as node_exporter 1.5 (and the
/// Go client's process collector) report them.
pub(crate) const METADATA: [(&str, &str, &str); 10] = [
    ("node_uname_info", "gauge", "Labeled system information as provided by the uname system call."),
    (
        "node_os_info",
        "gauge",
        "A metric with a constant '1' value labeled by build_id, id, id_like, image_id, image_version, name, pretty_name, variant, variant_id, version, version_codename, version_id.",
    ),
    ("node_os_version", "gauge", "Metric containing the major.minor part of the OS version."),
    ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds."),
    ("process_max_fds", "gauge", "Maximum number of open file descriptors."),
    ("process_open_fds", "gauge", "Number of open file descriptors."),
    ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes."),
    ("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds."),
    ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes."),
    ("process_virtual_memory_max_bytes", "gauge", "Maximum amount of virtual memory available in bytes."),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_like_node_exporter() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\nHOME_URL=\"https://www.debian.org/\"\n# comment\ngarbage\n";
        let out = parse_os_release(text);
        assert_eq!(out.len(), 2);
        let info = &out[0];
        assert_eq!(info.labels.len(), 12);
        let l = |k: &str| info.labels.iter().find(|(n, _)| *n == k).unwrap().1.as_str();
        assert_eq!(l("pretty_name"), "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(l("version_codename"), "bookworm");
        assert_eq!(l("id_like"), "");
        assert_eq!(out[1].name, "node_os_version");
        assert_eq!(out[1].value, 12.0);
        assert_eq!(out[1].labels.iter().map(|l| l.0).collect::<Vec<_>>(), ["id", "id_like", "name"]);

        let out = parse_os_release("ID=ubuntu\nVERSION_ID='22.04.3'\nNAME=\"a \\\"q\\\" \\\\ b\"\n");
        assert_eq!(out[1].value, 22.04);
        assert_eq!(out[0].labels.iter().find(|(n, _)| *n == "name").unwrap().1, "a \"q\" \\ b");
        // No version: info only.
        assert_eq!(parse_os_release("ID=arch\n").len(), 1);
        assert_eq!(parse_os_release("VERSION_ID=rolling\n").len(), 1);
        assert_eq!(major_minor("7."), Some(7.0));
        assert_eq!(major_minor("1.2.3"), Some(1.2));
    }

    #[test]
    fn own_process_and_uname() {
        let u = uname();
        assert_eq!(u[0].labels.len(), 6);
        if !Path::new("/proc/self/stat").exists() {
            return;
        }
        let out = process(100.0, Some(1.0e9)).unwrap();
        let get = |n: &str| out.iter().find(|m| m.name == n).map(|m| m.value).unwrap();
        assert!(get("process_resident_memory_bytes") > 1e5);
        assert!(get("process_open_fds") >= 3.0);
        assert!(get("process_max_fds") >= get("process_open_fds"));
        assert!(get("process_start_time_seconds") > 1.0e9);
        for m in &out {
            assert!(METADATA.iter().any(|(n, _, _)| *n == m.name), "{}", m.name);
        }
    }
}
