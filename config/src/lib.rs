//! Typed configuration for the archfarm coordinator and agent, read from TOML files.
//! Unknown keys are errors, every field documents its default, and every error names the file,
//! the key and the reason.
//!
//! # Layout
//! - [`coordinator`]: `archfarm serve` settings.
//! - [`agent`]: `archfarm-agent` settings.
//! - [`loading`]: loading a file, the error type, path resolution, TLS files.

pub mod agent;
pub mod coordinator;
pub mod loading;

pub use agent::AgentConfig;
pub use coordinator::CoordinatorConfig;
pub use loading::{load, ConfigError, TlsFiles, Validate};

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn shipped_examples_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let c: CoordinatorConfig = load(&dir.join("coordinator.toml")).unwrap();
        assert_eq!(c.tls.ca_cert, PathBuf::from("/etc/archfarm/ca.pem"));
        let a: AgentConfig = load(&dir.join("agent.toml")).unwrap();
        assert_eq!(a.capacity, 2);
        assert_eq!(a.extra_platforms[0].to_string(), "linux/386");
    }

    #[test]
    fn unknown_keys_name_the_file_and_the_key() {
        let (_d, path) = write(
            "listen = \"127.0.0.1:7000\"\nlisten_port = 1\n[tls]\nca_cert='a'\ncert='b'\nkey='c'\nclient_tokens='t'\n",
        );
        let err = load::<CoordinatorConfig>(&path).unwrap_err().to_string();
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        assert!(err.contains("unknown field `listen_port`") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn bad_platforms_are_refused_at_load() {
        let (_d, path) = write("coordinator = \"127.0.0.1:7000\"\nextra_platforms = [\"linux//v7\"]\n[tls]\nca_cert='a'\ncert='b'\nkey='c'\n");
        let err = load::<AgentConfig>(&path).unwrap_err().to_string();
        assert!(err.contains("extra_platforms") && err.contains("invalid platform \"linux//v7\""), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_key_and_the_fix() {
        let (_d, path) =
            write("coordinator = \"127.0.0.1:7000\"\ncapacity = 0\n[tls]\nca_cert='a'\ncert='b'\nkey='c'\n");
        let err = load::<AgentConfig>(&path).unwrap_err().to_string();
        assert!(err.ends_with("capacity: must be at least 1"), "{err}");

        let (_d, path) =
            write("listen = \"not an address\"\n[tls]\nca_cert='a'\ncert='b'\nkey='c'\nclient_tokens='t'\n");
        let err = load::<CoordinatorConfig>(&path).unwrap_err().to_string();
        assert!(err.contains("listen"), "{err}");

        let (_d, path) = write("listen = \"127.0.0.1:7000\"\nmax_frame_bytes = 10\n[tls]\nca_cert='a'\ncert='b'\nkey='c'\nclient_tokens='t'\n");
        let err = load::<CoordinatorConfig>(&path).unwrap_err().to_string();
        assert!(err.contains("max_frame_bytes: must be between"), "{err}");
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let (d, path) = write(
            "listen = \"127.0.0.1:7000\"\n[tls]\nca_cert='ca.pem'\ncert='/abs/c.pem'\nkey='k'\nclient_tokens='t'\n",
        );
        let c: CoordinatorConfig = load(&path).unwrap();
        assert_eq!(c.tls.ca_cert, d.path().join("ca.pem"));
        assert_eq!(c.tls.cert, PathBuf::from("/abs/c.pem"));
        assert_eq!(c.data_dir, d.path().join("data"));
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let err = load::<AgentConfig>(Path::new("/nonexistent/agent.toml")).unwrap_err().to_string();
        assert!(err.starts_with("/nonexistent/agent.toml: cannot read configuration"), "{err}");
    }
}
