//! Test images, made here because no registry can be reached: `docker import` of a root
//! filesystem assembled from the machine's own files.
//!
//! - [`BUSYBOX`]: Debian's `busybox-static` with every applet linked, `/tmp`.
//! - [`NODE`]: the busybox tree plus the machine's `node`, the libraries `ldd` lists,
//!   and npm.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

pub const BUSYBOX: &str = "scalemesh-test/busybox:1";
pub const NODE: &str = "scalemesh-test/node:2";

static MADE: Mutex<bool> = Mutex::new(false);

/// Makes both images once per test binary (a no-op when they exist).
pub fn ensure() {
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if *made {
        return;
    }
    if !exists(BUSYBOX) {
        import(BUSYBOX, busybox_tree);
    }
    if !exists(NODE) {
        import(NODE, |root| {
            busybox_tree(root);
            node_tree(root);
        });
    }
    *made = true;
}

fn exists(tag: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", tag])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn import(tag: &str, fill: impl FnOnce(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    std::fs::create_dir_all(&root).unwrap();
    fill(&root);
    let tar = dir.path().join("rootfs.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    run(Command::new("docker").args(["import"]).arg(&tar).arg(tag));
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn busybox_tree(root: &Path) {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is installed (bash .ci/run installs it)");
    for d in ["bin", "usr/bin", "tmp", "etc", "workspace"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::set_permissions(
        root.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let list = Command::new(busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("/bin/busybox", root.join("bin").join(applet));
        }
    }
    std::os::unix::fs::symlink("/bin/busybox", root.join("usr/bin/env")).unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/tmp:/bin/sh\n").unwrap();
}

fn node_tree(root: &Path) {
    let node = Path::new("/usr/bin/node");
    copy_with_parents(node, root);
    let ldd = Command::new("ldd").arg(node).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let lib = line
            .split("=>")
            .last()
            .unwrap_or("")
            .split_whitespace()
            .next()
            .unwrap_or("");
        if lib.starts_with('/') {
            copy_with_parents(Path::new(lib), root);
        }
    }
    std::fs::create_dir_all(root.join("usr/lib")).unwrap();
    run(Command::new("cp")
        .arg("-a")
        .arg("/usr/lib/node_modules")
        .arg(root.join("usr/lib/")));
    let _ = std::fs::remove_file(root.join("usr/bin/npm"));
    std::os::unix::fs::symlink(
        "../lib/node_modules/npm/bin/npm-cli.js",
        root.join("usr/bin/npm"),
    )
    .unwrap();
}

fn copy_with_parents(path: &Path, root: &Path) {
    let real = std::fs::canonicalize(path).unwrap();
    let dest = root.join(path.strip_prefix("/").unwrap());
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(&real, &dest).unwrap();
}
