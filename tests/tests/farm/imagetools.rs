//! `archfarm imagetools create`: the merge step of a CI matrix. Each platform was pushed on its
//! own, to its own repository; one index over them is published, each child checked by its
//! config, and read back with skopeo.

use archfarm_tests::*;

/// The single child digest of the one-platform index at `reference`.
fn only_child(reference: &str) -> String {
    let index: serde_json::Value = serde_json::from_slice(&skopeo::raw(reference)).unwrap();
    index["manifests"][0]["digest"].as_str().unwrap().to_owned()
}

#[test]
fn an_index_over_images_pushed_separately_lists_each_checked_platform() {
    let farm = Farm::start(&[AgentSpec::amd64(), AgentSpec::arm64_standin()]);
    let ctx = context(PER_ARCH_DOCKERFILE);
    let (amd64, arm64) =
        (format!("{}:amd64", farm.repo("ci/app-amd64")), format!("{}:arm64", farm.repo("ci/app-arm64")));
    for (platform, tag) in [("linux/amd64", &amd64), ("linux/arm64", &arm64)] {
        let out = farm.build(platform, &[tag], ctx.path(), &[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let arm64_child = only_child(&arm64);
    let by_digest = format!("{}@{arm64_child}", farm.repo("ci/app-arm64"));
    let target = format!("{}:1.0", farm.repo("ci/app"));

    // One source by tag (an index: its child is taken), one by digest.
    let out = farm.archfarm(&["imagetools", "create", "-t", &target, &amd64, &by_digest]);
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (status, digest, _) = farm.registry_get("/v2/ci/app/manifests/1.0", archfarm_shared::oci::OCI_INDEX);
    assert_eq!((status, digest.as_deref()), (200, Some(printed.as_str())), "the printed digest is the tag's");
    let index: serde_json::Value = serde_json::from_slice(&skopeo::raw(&target)).unwrap();
    let children = index["manifests"].as_array().unwrap();
    let archs: Vec<&str> = children.iter().map(|m| m["platform"]["architecture"].as_str().unwrap()).collect();
    assert_eq!(archs, ["amd64", "arm64"], "{index}");
    assert_eq!(children[1]["digest"], arm64_child.as_str(), "the same image, not a copy");
    // Each child now lives in the index's repository, and its config says its platform.
    let config = skopeo::config(&format!("{}@{arm64_child}", farm.repo("ci/app")));
    assert_eq!(config["architecture"], "arm64");

    // Two images of one platform are refused, and nothing is written.
    let again = format!("{}:2.0", farm.repo("ci/app"));
    let out = farm.archfarm(&["imagetools", "create", "-t", &again, &amd64, &amd64]);
    assert!(!out.status.success());
    assert!(text(&out).contains("are both linux/amd64"), "{}", text(&out));
    assert!(!farm.tags("ci/app").contains(&"2.0".to_owned()));
}
