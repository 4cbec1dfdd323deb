//! `node_filesystem_*`: space and inodes of mounted filesystems, as
//! node_exporter 1.5's filesystem collector reports them.
//!
//! - Mounts come from `<proc>/1/mounts` (the host's mount namespace when the
//!   host's `/proc` is mounted into a container), falling back to
//!   `<proc>/mounts` when PID 1's file cannot be read (`hidepid`).
//! - Mount points matching `mount_points_exclude` and filesystem types
//!   matching `fs_types_exclude` are skipped (node_exporter's flags
//!   `--collector.filesystem.mount-points-exclude` / `fs-types-exclude`).
//! - Each remaining mount is `statfs`ed at `<rootfs>/<mount point>`; the
//!   `mountpoint` label has the rootfs prefix stripped, as node_exporter's
//!   `--path.rootfs` does. A failed `statfs` yields only
//!   `node_filesystem_device_error 1`.
//! - A (device, mountpoint, fstype) triple is reported once, first wins.
//!
//! Not done: node_exporter's stuck-mount watchdog (a `statfs` on a hung
//! network mount blocks this collection, as it blocks node_exporter's first
//! scrape of it).

use std::path::Path;

use regex::Regex;

use super::{Metric, read_small};

/// node_exporter 1.5.0's default `--collector.filesystem.mount-points-exclude`
/// (upstream; Debian's package also excludes `/run`, `/mnt` and `/media`).
pub const DEFAULT_MOUNT_POINTS_EXCLUDE: &str =
    "^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)";

/// node_exporter 1.5.0's default `--collector.filesystem.fs-types-exclude`.
pub const DEFAULT_FS_TYPES_EXCLUDE: &str = "^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|sysfs|tracefs)$";

/// One line of a mounts file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    pub device: String,
    pub mount_point: String,
    pub fs_type: String,
    pub read_only: bool,
}

/// Parses `/proc/<pid>/mounts` (fstab format): `device mountpoint fstype
/// options …`. `\040` and `\011` in the mount point become a space and a tab
/// (node_exporter decodes only those two). Short lines are skipped.
pub(crate) fn parse_mounts(text: &str, rootfs: &Path) -> Vec<Mount> {
    let root = rootfs.to_string_lossy();
    let root = root.trim_end_matches('/');
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.split_ascii_whitespace();
        let (Some(device), Some(mp), Some(fs_type), Some(options)) = (f.next(), f.next(), f.next(), f.next()) else {
            continue;
        };
        let mut mount_point = mp.replace("\\040", " ").replace("\\011", "\t");
        if !root.is_empty()
            && let Some(rest) = mount_point.strip_prefix(root)
            && (rest.is_empty() || rest.starts_with('/'))
        {
            mount_point = if rest.is_empty() { "/".to_string() } else { rest.to_string() };
        }
        out.push(Mount {
            device: device.to_string(),
            mount_point,
            fs_type: fs_type.to_string(),
            read_only: options.split(',').any(|o| o == "ro"),
        });
    }
    out
}

/// Space figures of one filesystem, as `statfs(2)` reports them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Space {
    pub size: f64,
    pub free: f64,
    pub avail: f64,
    pub files: f64,
    pub files_free: f64,
}

fn statfs(path: &Path) -> Result<Space, std::io::Error> {
    let s = rustix::fs::statfs(path)?;
    let bsize = s.f_bsize as f64;
    Ok(Space {
        size: s.f_blocks as f64 * bsize,
        free: s.f_bfree as f64 * bsize,
        avail: s.f_bavail as f64 * bsize,
        files: s.f_files as f64,
        files_free: s.f_ffree as f64,
    })
}

/// The filesystem collector's settings.
#[derive(Debug, Clone)]
pub(crate) struct FsFilter {
    pub mount_points_exclude: Regex,
    pub fs_types_exclude: Regex,
}

/// Collects `node_filesystem_*` for the mounts of `<proc>/1/mounts`.
pub(crate) fn collect(proc: &Path, rootfs: &Path, filter: &FsFilter) -> Result<Vec<Metric>, String> {
    let text = read_small(&proc.join("1/mounts")).or_else(|_| read_small(&proc.join("mounts")))?;
    let mounts = parse_mounts(&text, rootfs);
    Ok(metrics(&mounts, filter, |mp| statfs(&rootfs.join(mp.trim_start_matches('/')))))
}

/// The metrics of `mounts` after filtering, with `stat` giving each mount's
/// figures (a seam for tests).
pub(crate) fn metrics(
    mounts: &[Mount],
    filter: &FsFilter,
    mut stat: impl FnMut(&str) -> Result<Space, std::io::Error>,
) -> Vec<Metric> {
    let mut out = Vec::new();
    let mut seen: Vec<(&str, &str, &str)> = Vec::new();
    for m in mounts {
        if filter.mount_points_exclude.is_match(&m.mount_point) || filter.fs_types_exclude.is_match(&m.fs_type) {
            continue;
        }
        let key = (m.device.as_str(), m.mount_point.as_str(), m.fs_type.as_str());
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let labels =
            || vec![("device", m.device.clone()), ("fstype", m.fs_type.clone()), ("mountpoint", m.mount_point.clone())];
        let metric = |name: &str, value: f64| Metric { name: name.to_string(), labels: labels(), value };
        match stat(&m.mount_point) {
            Ok(s) => {
                out.push(metric("node_filesystem_device_error", 0.0));
                out.push(metric("node_filesystem_size_bytes", s.size));
                out.push(metric("node_filesystem_free_bytes", s.free));
                out.push(metric("node_filesystem_avail_bytes", s.avail));
                out.push(metric("node_filesystem_files", s.files));
                out.push(metric("node_filesystem_files_free", s.files_free));
                out.push(metric("node_filesystem_readonly", if m.read_only { 1.0 } else { 0.0 }));
            }
            Err(e) => {
                tracing::debug!(mountpoint = %m.mount_point, error = %e, "statfs failed");
                out.push(metric("node_filesystem_device_error", 1.0));
            }
        }
    }
    out
}

/// Type and help of the filesystem families (all gauges).
pub(crate) const METADATA: [(&str, &str, &str); 7] = [
    ("node_filesystem_avail_bytes", "gauge", "Filesystem space available to non-root users in bytes."),
    (
        "node_filesystem_device_error",
        "gauge",
        "Whether an error occurred while getting statistics for the given device.",
    ),
    ("node_filesystem_files", "gauge", "Filesystem total file nodes."),
    ("node_filesystem_files_free", "gauge", "Filesystem total free file nodes."),
    ("node_filesystem_free_bytes", "gauge", "Filesystem free space in bytes."),
    ("node_filesystem_readonly", "gauge", "Filesystem read-only status."),
    ("node_filesystem_size_bytes", "gauge", "Filesystem size in bytes."),
];

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "proc /proc proc rw,relatime 0 0
sysfs /sys sysfs rw,relatime 0 0
devtmpfs /dev devtmpfs rw,relatime,size=12334524k 0 0
/dev/vda / ext4 rw,relatime,discard 0 0
/dev/vdb1 /srv/my\\040data xfs ro,noatime 0 0
tmpfs /run tmpfs rw,nosuid,nodev 0 0
tmpfs /run/credentials/systemd-sysctl.service tmpfs ro 0 0
overlay /var/lib/docker/overlay2/abc/merged overlay rw 0 0
/dev/vdc /mnt/backup ext4 rw 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0
nfs:/x /mnt/stuck nfs4 rw 0 0
/dev/vda / ext4 rw,relatime,discard 0 0
short line
";

    fn filter() -> FsFilter {
        FsFilter {
            mount_points_exclude: Regex::new(DEFAULT_MOUNT_POINTS_EXCLUDE).unwrap(),
            fs_types_exclude: Regex::new(DEFAULT_FS_TYPES_EXCLUDE).unwrap(),
        }
    }

    #[test]
    fn excludes_pseudo_filesystems_like_node_exporter() {
        let mounts = parse_mounts(MOUNTS, Path::new("/"));
        assert_eq!(mounts.len(), 12, "the short line is skipped");
        assert_eq!(mounts[4].mount_point, "/srv/my data");
        assert!(mounts[4].read_only);
        let out = metrics(&mounts, &filter(), |mp| {
            if mp == "/mnt/stuck" {
                return Err(std::io::Error::from(std::io::ErrorKind::TimedOut));
            }
            Ok(Space { size: 1000.0, free: 500.0, avail: 400.0, files: 10.0, files_free: 5.0 })
        });
        let mut mps: Vec<&str> = out.iter().map(|m| m.labels[2].1.as_str()).collect();
        mps.dedup();
        assert_eq!(mps, ["/", "/srv/my data", "/run", "/mnt/backup", "/mnt/stuck"]);
        let get = |mp: &str, name: &str| out.iter().find(|m| m.name == name && m.labels[2].1 == mp).map(|m| m.value);
        assert_eq!(get("/", "node_filesystem_size_bytes"), Some(1000.0));
        assert_eq!(get("/", "node_filesystem_readonly"), Some(0.0));
        assert_eq!(get("/srv/my data", "node_filesystem_readonly"), Some(1.0));
        assert_eq!(get("/mnt/stuck", "node_filesystem_device_error"), Some(1.0));
        assert_eq!(get("/mnt/stuck", "node_filesystem_size_bytes"), None);
        // Every family has the (device, fstype, mountpoint) label set.
        for m in &out {
            assert_eq!(m.labels.iter().map(|l| l.0).collect::<Vec<_>>(), ["device", "fstype", "mountpoint"]);
            assert!(METADATA.iter().any(|(n, _, _)| *n == m.name));
        }
    }

    #[test]
    fn rootfs_prefix_is_stripped() {
        let m = parse_mounts(
            "/dev/sda1 /host/root ext4 rw 0 0\n/dev/sda2 /host/root/boot vfat rw 0 0\n/dev/sda3 /host/rootx ext4 rw 0 0\n",
            Path::new("/host/root/"),
        );
        let mps: Vec<_> = m.iter().map(|m| m.mount_point.as_str()).collect();
        assert_eq!(mps, ["/", "/boot", "/host/rootx"]);
    }

    #[test]
    fn real_mounts_when_present() {
        if !Path::new("/proc/self/mounts").exists() {
            return;
        }
        let out = collect(Path::new("/proc"), Path::new("/"), &filter()).unwrap();
        let root = out.iter().find(|m| m.name == "node_filesystem_size_bytes" && m.labels[2].1 == "/");
        assert!(root.is_some_and(|m| m.value > 0.0), "the root filesystem is reported: {out:?}");
    }
}
