//! Hostile layers against a destination with the user's files in it and beside it: nothing
//! outside is touched, nothing the user had is deleted, and what was skipped is said.

use super::*;

/// One tar entry: a path, and what it is.
enum E<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
}

fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        match entry {
            E::File(path, data) => {
                h.set_size(data.len() as u64);
                tar.append_data(&mut h, path, *data).unwrap();
            }
            E::Dir(path) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                tar.append_data(&mut h, path, &[][..]).unwrap();
            }
            E::Symlink(path, target) | E::HardLink(path, target) => {
                let kind = if matches!(entry, E::Symlink(..)) { tar::EntryType::Symlink } else { tar::EntryType::Link };
                h.set_entry_type(kind);
                h.set_size(0);
                tar.append_link(&mut h, path, target).unwrap();
            }
        }
    }
    tar.into_inner().unwrap()
}

/// A destination, and beside it a "home" holding a secret the image must not reach.
struct Scene {
    dest: tempfile::TempDir,
    home: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".ssh")).unwrap();
        std::fs::write(home.path().join(".ssh/id_ed25519"), b"secret").unwrap();
        Scene { dest: tempfile::tempdir().unwrap(), home }
    }

    fn apply(&self, layers: &[Vec<u8>]) -> Vec<String> {
        let mut unpacker = Unpacker::open(self.dest.path()).unwrap();
        for l in layers {
            unpacker.apply(&l[..]).unwrap();
        }
        unpacker.skipped
    }

    fn home_intact(&self) -> bool {
        std::fs::read(self.home.path().join(".ssh/id_ed25519")).is_ok_and(|b| b == b"secret")
    }

    fn at(&self, rel: &str) -> PathBuf {
        self.dest.path().join(rel)
    }
}

#[test]
fn whiteouts_delete_from_lower_layers_and_opaque_dirs_empty_them() {
    let s = Scene::new();
    let lower =
        layer(&[E::File("etc/a", b"1"), E::File("etc/b", b"2"), E::File("var/x/old", b"o"), E::File("keep", b"k")]);
    let upper = layer(&[E::File("var/x/new", b"n"), E::File("var/x/.wh..wh..opq", b""), E::File("etc/.wh.a", b"")]);
    assert!(s.apply(&[lower, upper]).is_empty());
    assert!(!s.at("etc/a").exists());
    assert_eq!(std::fs::read(s.at("etc/b")).unwrap(), b"2");
    assert!(!s.at("var/x/old").exists(), "the opaque dir dropped the lower layer's file");
    assert_eq!(std::fs::read(s.at("var/x/new")).unwrap(), b"n", "and kept its own layer's");
    assert_eq!(std::fs::read(s.at("keep")).unwrap(), b"k");
}

#[test]
fn a_whiteout_under_a_symlink_out_of_the_destination_deletes_nothing_outside() {
    let s = Scene::new();
    let home = s.home.path().to_str().unwrap();
    let skipped = s.apply(&[
        layer(&[E::Symlink("x", home)]),
        layer(&[E::File("x/.ssh/.wh.id_ed25519", b""), E::File("x/.wh..ssh", b"")]),
    ]);
    assert!(s.home_intact(), "the user's ~/.ssh survives");
    assert!(std::fs::symlink_metadata(s.at("x")).unwrap().file_type().is_symlink(), "the link itself is written");
    // The export never wrote x/.ssh: the whiteouts hide nothing of it, and follow nothing.
    assert!(skipped.is_empty(), "{skipped:?}");
}

#[test]
fn files_and_links_through_a_symlink_out_of_the_destination_are_skipped_and_reported() {
    let s = Scene::new();
    let home = s.home.path().to_str().unwrap();
    let skipped = s.apply(&[
        layer(&[E::Symlink("x", home), E::Symlink("up", "../..")]),
        layer(&[
            E::File("x/.ssh/id_ed25519", b"attacker"),
            E::File("up/planted", b"p"),
            E::HardLink("h", "../../etc/passwd"),
        ]),
    ]);
    assert!(s.home_intact(), "not overwritten through the link");
    assert!(!s.dest.path().parent().unwrap().parent().unwrap().join("planted").exists());
    assert!(!s.at("h").exists());
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    assert!(skipped.iter().any(|l| l.starts_with("x/.ssh/id_ed25519: ")), "{skipped:?}");
    assert!(skipped.iter().any(|l| l.contains("a hard link to a path outside the destination")), "{skipped:?}");
}

#[test]
fn an_entry_named_only_as_a_whiteout_empties_nothing() {
    let s = Scene::new();
    std::fs::write(s.at("users-own"), b"mine").unwrap();
    let skipped = s.apply(&[layer(&[E::File("a", b"1")]), layer(&[E::File(".wh.", b""), E::File("sub/.wh..", b"")])]);
    assert_eq!(std::fs::read(s.at("a")).unwrap(), b"1");
    assert_eq!(std::fs::read(s.at("users-own")).unwrap(), b"mine");
    assert_eq!(skipped.len(), 2, "{skipped:?}");
}

#[test]
fn what_the_destination_held_before_the_export_is_never_deleted() {
    // `-o .` in a project: the image's harmless `src/.wh..wh..opq` and `.wh.README` must not
    // empty the user's own src/ or delete the user's README.
    let s = Scene::new();
    std::fs::create_dir(s.at("src")).unwrap();
    std::fs::write(s.at("src/main.rs"), b"fn main() {}").unwrap();
    std::fs::write(s.at("README"), b"read me").unwrap();
    s.apply(&[
        layer(&[E::Dir("src"), E::File("src/image-file", b"i")]),
        layer(&[E::File("src/.wh..wh..opq", b""), E::File(".wh.README", b"")]),
    ]);
    assert_eq!(std::fs::read(s.at("src/main.rs")).unwrap(), b"fn main() {}");
    assert_eq!(std::fs::read(s.at("README")).unwrap(), b"read me");
    assert!(!s.at("src/image-file").exists(), "what the image's lower layer wrote is emptied");
}

#[test]
fn a_hard_link_inside_the_destination_is_made_and_a_symlink_replaced_not_followed() {
    let s = Scene::new();
    let home = s.home.path().join(".ssh/id_ed25519");
    let skipped = s.apply(&[
        layer(&[E::File("bin/busybox", b"bb"), E::Symlink("victim", home.to_str().unwrap())]),
        layer(&[E::HardLink("bin/sh", "bin/busybox"), E::File("victim", b"replaced")]),
    ]);
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(std::fs::read(s.at("bin/sh")).unwrap(), b"bb");
    assert_eq!(std::fs::read(s.at("victim")).unwrap(), b"replaced", "the link was replaced by the file");
    assert!(s.home_intact(), "and the file it pointed at was not written through it");
}

#[test]
fn a_whiteout_of_a_directory_the_user_had_removes_only_what_the_image_put_in_it() {
    let s = Scene::new();
    std::fs::create_dir(s.at("conf")).unwrap();
    std::fs::write(s.at("conf/mine"), b"mine").unwrap();
    // No directory entries: the directories are made on the way to the files.
    s.apply(&[
        layer(&[E::File("conf/image", b"i"), E::File("new/deep/file", b"f")]),
        layer(&[E::File(".wh.conf", b""), E::File(".wh.new", b"")]),
    ]);
    assert_eq!(std::fs::read(s.at("conf/mine")).unwrap(), b"mine");
    assert!(!s.at("conf/image").exists());
    assert!(!s.at("new").exists(), "a directory the export made is deleted whole");
}
