//! Base images from a registry that wants a login: agents hand their Docker config's
//! credentials to the engine's BuildKit, for every stage of a multi-stage build.

use archfarm_tests::*;

const USER: &str = "ci";
const PASSWORD: &str = "s3cret-base";

/// A two-stage build on a private base: a tools stage on the build platform (it `RUN`s the
/// amd64 busybox, native on this host) and a final stage per target platform.
fn app_dockerfile(private: &str) -> String {
    format!(
        "FROM --platform=$BUILDPLATFORM {private}/base:1 AS tools\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo tools from $(/bin/busybox uname -m) > /tools.txt\"]\n\
         FROM {private}/base:1\n\
         COPY --from=tools /tools.txt /tools.txt\n\
         COPY app.txt /app.txt\n"
    )
}

#[test]
fn a_two_platform_build_from_a_private_base_image_pulls_with_the_agents_credentials() {
    let mut farm = Farm::start(&[AgentSpec::amd64(), AgentSpec::arm64_standin()]);
    let private = farm.start_private_registry(USER, PASSWORD);
    farm.set_logins(&[(&private, USER, PASSWORD)]);

    // The base image, per platform, pushed into the private registry by the farm itself.
    let base = context(PER_ARCH_DOCKERFILE);
    let out = farm.build("linux/amd64,linux/arm64", &[&format!("{private}/base:1")], base.path(), &[]);
    assert!(out.status.success(), "pushing the base image with the agents' login:\n{}", text(&out));

    let app = context(&app_dockerfile(&private));
    std::fs::write(app.path().join("app.txt"), "app 1\n").unwrap();
    let tag = format!("{}:1", farm.repo("team/app"));
    let out = farm.build("linux/amd64,linux/arm64", &[&tag], app.path(), &[]);
    assert!(out.status.success(), "building on the private base:\n{}", text(&out));

    // Independent check: the arm64 child carries the base's aarch64 busybox, the tools stage's
    // output (built on the build platform) and the application file.
    let index: serde_json::Value = serde_json::from_slice(&skopeo::raw(&tag)).unwrap();
    let child = |i: usize| format!("{}@{}", farm.repo("team/app"), index["manifests"][i]["digest"].as_str().unwrap());
    let arm = child(1);
    assert_eq!(skopeo::config(&arm)["architecture"], "arm64");
    let busybox = skopeo::file_from_image(&arm, "bin/busybox").expect("the base's busybox in the arm64 child");
    assert_eq!(elf_machine(&busybox), Some(EM_AARCH64));
    assert_eq!(skopeo::file_from_image(&arm, "tools.txt").as_deref(), Some(&b"tools from x86_64\n"[..]));
    assert_eq!(skopeo::file_from_image(&arm, "app.txt").as_deref(), Some(&b"app 1\n"[..]));
    let amd = skopeo::file_from_image(&child(0), "bin/busybox").expect("the base's busybox in the amd64 child");
    assert_eq!(elf_machine(&amd), Some(EM_X86_64));

    // No login: the pull is refused, and the client is told which registry and what to do.
    farm.set_logins(&[]);
    std::fs::write(app.path().join("app.txt"), "app 2\n").unwrap();
    let tag2 = format!("{}:2", farm.repo("team/app"));
    let out = farm.build("linux/amd64", &[&tag2], app.path(), &[]);
    let said = text(&out);
    assert!(!out.status.success(), "a build without credentials for its base must fail:\n{said}");
    assert!(said.contains(&format!("pulling from {private} was refused")), "{said}");
    assert!(said.contains("has no credentials for it"), "{said}");
    assert!(said.contains("docker login"), "{said}");
    assert!(farm.tags("team/app") == ["1"], "nothing was published under :2");
    // The agents are not blamed: both still take jobs.
    let agents = farm.archfarm(&["agents", "ls"]);
    assert!(!text(&agents).contains("quarantined"), "{}", text(&agents));
}
