//! A container's CPU time, as the kernel counts it for the container's cgroup: every process in
//! it (an nginx master and its worker, HAProxy's master and worker, the health checks the engine
//! runs inside), threads that already exited included.
//!
//! The cgroup is found from the container's first process (`/proc/PID/cgroup`) and the mounts of
//! this machine (`/proc/self/mountinfo`), so it works under either layout: cgroup v1, where the
//! `cpuacct` controller's `cpuacct.usage` holds nanoseconds, and cgroup v2, where `cpu.stat`'s
//! `usage_usec` holds microseconds. On a hybrid machine (v1 controllers beside an empty v2
//! hierarchy) the v1 `cpuacct` file is the one that counts.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

/// The file that holds a cgroup's CPU usage, and in which unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CpuUsage {
    /// cgroup v1: `cpuacct.usage`, one number of nanoseconds.
    Nanoseconds(PathBuf),
    /// cgroup v2: `cpu.stat`, whose `usage_usec` line is microseconds.
    CpuStat(PathBuf),
}

impl CpuUsage {
    /// The cgroup of the process `pid` (a container's first process).
    pub(crate) fn of_process(pid: u32) -> Result<CpuUsage> {
        let mountinfo =
            fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
        let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .with_context(|| format!("reading /proc/{pid}/cgroup"))?;
        let usage = usage_file(&mountinfo, &cgroup)
            .with_context(|| format!("no cgroup CPU accounting found for process {pid}"))?;
        // The root cgroup counts the whole machine: a container is never there, so a root path
        // means the layout was misread, and the figure would be wrong rather than missing.
        let dir = usage.path().parent().unwrap_or(Path::new("/"));
        if is_mount_root(&mountinfo, dir) {
            bail!(
                "process {pid} is in the root cgroup ({}): not a container's",
                dir.display()
            );
        }
        usage.seconds()?;
        Ok(usage)
    }

    fn path(&self) -> &Path {
        match self {
            CpuUsage::Nanoseconds(p) | CpuUsage::CpuStat(p) => p,
        }
    }

    /// CPU seconds the cgroup has used so far.
    pub(crate) fn seconds(&self) -> Result<f64> {
        let text = fs::read_to_string(self.path())
            .with_context(|| format!("reading {}", self.path().display()))?;
        let parsed = match self {
            CpuUsage::Nanoseconds(_) => parse_nanoseconds(&text).map(|ns| ns as f64 / 1e9),
            CpuUsage::CpuStat(_) => parse_usage_usec(&text).map(|us| us as f64 / 1e6),
        };
        parsed.with_context(|| format!("unexpected content in {}", self.path().display()))
    }
}

/// One cgroup hierarchy mounted here: the cgroup its mount shows as its root, and where.
#[derive(Debug)]
struct Mount<'a> {
    root: &'a str,
    mount_point: &'a str,
}

/// The v1 `cpuacct` mount and the v2 mount of `/proc/self/mountinfo`, when present. A line is
/// `ID PARENT MAJ:MIN ROOT MOUNT-POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER-OPTIONS`.
fn cgroup_mounts(mountinfo: &str) -> (Option<Mount<'_>>, Option<Mount<'_>>) {
    let mut v1 = None;
    let mut v2 = None;
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = before.split_whitespace().collect();
        let (Some(&root), Some(&mount_point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let mut after = after.split_whitespace();
        let fstype = after.next().unwrap_or("");
        let super_options = after.nth(1).unwrap_or("");
        let mount = Mount { root, mount_point };
        match fstype {
            "cgroup" if super_options.split(',').any(|o| o == "cpuacct") => {
                v1.get_or_insert(mount);
            }
            "cgroup2" => {
                v2.get_or_insert(mount);
            }
            _ => {}
        }
    }
    (v1, v2)
}

/// The CPU usage file of the process whose `/proc/PID/cgroup` is `cgroup`: lines of
/// `HIERARCHY-ID:CONTROLLERS:PATH`, where v2's line is `0::PATH`.
fn usage_file(mountinfo: &str, cgroup: &str) -> Option<CpuUsage> {
    let (v1, v2) = cgroup_mounts(mountinfo);
    let path_of = |wanted: &dyn Fn(&str, &str) -> bool| {
        cgroup.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            wanted(id, controllers).then_some(path)
        })
    };
    let v1_path = path_of(&|_, controllers| controllers.split(',').any(|c| c == "cpuacct"));
    if let (Some(mount), Some(path)) = (v1, v1_path) {
        return Some(CpuUsage::Nanoseconds(
            below(&mount, path).join("cpuacct.usage"),
        ));
    }
    let v2_path = path_of(&|id, controllers| id == "0" && controllers.is_empty());
    if let (Some(mount), Some(path)) = (v2, v2_path) {
        return Some(CpuUsage::CpuStat(below(&mount, path).join("cpu.stat")));
    }
    None
}

/// The directory of cgroup `path` under `mount` (whose root may itself be a cgroup below `/`).
fn below(mount: &Mount<'_>, path: &str) -> PathBuf {
    let relative = if mount.root == "/" {
        path
    } else {
        path.strip_prefix(mount.root).unwrap_or(path)
    };
    Path::new(mount.mount_point).join(relative.trim_start_matches('/'))
}

/// True when `dir` is a cgroup mount point itself: the root of its hierarchy.
fn is_mount_root(mountinfo: &str, dir: &Path) -> bool {
    let (v1, v2) = cgroup_mounts(mountinfo);
    [v1, v2]
        .into_iter()
        .flatten()
        .any(|m| Path::new(m.mount_point) == dir)
}

/// `cpuacct.usage`: one decimal number of nanoseconds.
fn parse_nanoseconds(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// `cpu.stat`'s `usage_usec` line.
fn parse_usage_usec(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == "usage_usec").then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTS: &str = "\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
25 24 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
29 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,cpu,cpuacct
30 25 0:28 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,memory
";

    const V2_MOUNTS: &str = "\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 24 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn cgroup_v1_reads_the_cpuacct_hierarchy_even_beside_an_empty_v2_one() {
        let cgroup = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n";
        assert_eq!(
            usage_file(HYBRID_MOUNTS, cgroup),
            Some(CpuUsage::Nanoseconds(
                "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpuacct.usage".into()
            ))
        );
    }

    #[test]
    fn cgroup_v2_reads_the_unified_hierarchy() {
        let cgroup = "0::/system.slice/docker-abc.scope\n";
        assert_eq!(
            usage_file(V2_MOUNTS, cgroup),
            Some(CpuUsage::CpuStat(
                "/sys/fs/cgroup/system.slice/docker-abc.scope/cpu.stat".into()
            ))
        );
    }

    #[test]
    fn a_mount_rooted_below_the_top_is_joined_without_repeating_its_root() {
        let mounts = "29 25 0:27 /outer /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct\n";
        let cgroup = "2:cpuacct:/outer/docker/abc\n";
        assert_eq!(
            usage_file(mounts, cgroup),
            Some(CpuUsage::Nanoseconds(
                "/sys/fs/cgroup/cpuacct/docker/abc/cpuacct.usage".into()
            ))
        );
    }

    #[test]
    fn no_cpu_accounting_is_none_not_a_wrong_path() {
        let memory_only = "30 25 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(usage_file(memory_only, "12:memory:/docker/abc\n"), None);
        assert_eq!(usage_file(HYBRID_MOUNTS, "12:memory:/docker/abc\n"), None);
    }

    #[test]
    fn the_root_of_a_hierarchy_is_recognised() {
        assert!(is_mount_root(
            HYBRID_MOUNTS,
            Path::new("/sys/fs/cgroup/cpu,cpuacct")
        ));
        assert!(!is_mount_root(
            HYBRID_MOUNTS,
            Path::new("/sys/fs/cgroup/cpu,cpuacct/docker/abc")
        ));
    }

    #[test]
    fn usage_is_read_in_its_own_unit() {
        assert_eq!(parse_nanoseconds("123456789\n"), Some(123_456_789));
        assert_eq!(parse_nanoseconds(""), None);
        let stat = "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n";
        assert_eq!(parse_usage_usec(stat), Some(2_500_000));
        assert_eq!(parse_usage_usec("user_usec 5\n"), None);
        assert_eq!(parse_usage_usec("usage_usec lots\n"), None);
    }
}
