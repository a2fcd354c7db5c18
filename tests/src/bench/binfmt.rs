//! The emulated baseline of P3: what `docker buildx` does on one host. Registers Debian's
//! `qemu-aarch64` binfmt handler (from qemu-user-static) for the run and removes it afterwards,
//! unless it was registered before we came. A marker file lets `scripts/bench.sh` undo it if the
//! harness dies.

use std::path::{Path, PathBuf};

const MISC: &str = "/proc/sys/fs/binfmt_misc";
const CONF: &str = "/usr/lib/binfmt.d/qemu-aarch64.conf";

/// While alive, aarch64 binaries run on this host through QEMU (in containers too: the handler
/// is registered with the F flag, so the interpreter is opened at registration).
#[derive(Debug)]
pub struct Emulation {
    registered_here: bool,
    mounted_here: bool,
    marker: PathBuf,
}

/// The marker file that says this harness registered the handler.
pub fn marker() -> PathBuf {
    crate::workspace().join(".farm/bench-binfmt-registered")
}

/// Unregisters `qemu-aarch64` if this harness registered it and could not undo it.
pub fn undo_if_left() {
    if marker().exists() {
        let _ = std::fs::write(Path::new(MISC).join("qemu-aarch64"), "-1");
        let _ = std::fs::remove_file(marker());
    }
}

impl Emulation {
    /// Registers `qemu-aarch64`, mounting binfmt_misc first if needed.
    pub fn register() -> anyhow::Result<Emulation> {
        let handler = Path::new(MISC).join("qemu-aarch64");
        let mut mounted_here = false;
        if !Path::new(MISC).join("register").exists() {
            let status =
                std::process::Command::new("mount").args(["-t", "binfmt_misc", "binfmt_misc", MISC]).status()?;
            anyhow::ensure!(status.success(), "cannot mount binfmt_misc on {MISC} (needs root)");
            mounted_here = true;
        }
        let marker = marker();
        if handler.exists() {
            return Ok(Emulation { registered_here: false, mounted_here, marker });
        }
        let line = std::fs::read_to_string(CONF)
            .map_err(|e| anyhow::anyhow!("{CONF}: {e} (install qemu-user-static; scripts/setup.sh does)"))?;
        std::fs::write(Path::new(MISC).join("register"), line.trim())
            .map_err(|e| anyhow::anyhow!("registering qemu-aarch64 in {MISC}: {e}"))?;
        if let Some(dir) = marker.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&marker, "qemu-aarch64\n")?;
        Ok(Emulation { registered_here: true, mounted_here, marker })
    }
}

impl Drop for Emulation {
    fn drop(&mut self) {
        if self.registered_here {
            if let Err(e) = std::fs::write(Path::new(MISC).join("qemu-aarch64"), "-1") {
                eprintln!("bench: could not unregister qemu-aarch64: {e}");
            }
            let _ = std::fs::remove_file(&self.marker);
        }
        if self.mounted_here {
            let _ = std::process::Command::new("umount").arg(MISC).status();
        }
    }
}
