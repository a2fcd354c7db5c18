//! Native provenance: each platform's image gets an SLSA provenance attestation stored the way
//! BuildKit stores one, checked through the registry's HTTP API; `docker pull` and skopeo
//! still choose the right child; `--provenance=false` leaves it out.

use archfarm_tests::*;
use base64::Engine as _;
use sha2::Digest as _;
use std::process::Command;

/// A JSON document from the registry's HTTP API, and the digest it is served under.
fn document(farm: &Farm, repo: &str, reference: &str, accept: &str) -> (serde_json::Value, String) {
    let (status, digest, body) = farm.registry_get(&format!("/v2/{repo}/manifests/{reference}"), accept);
    assert_eq!(status, 200, "{repo}:{reference}: {}", String::from_utf8_lossy(&body));
    (serde_json::from_slice(&body).unwrap(), digest.unwrap_or_default())
}

/// sha256 of the DER of the first certificate in a PEM file.
fn certificate_sha256(pem: &std::path::Path) -> String {
    let text = std::fs::read_to_string(pem).unwrap();
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    hex::encode(sha2::Sha256::digest(base64::engine::general_purpose::STANDARD.decode(body).unwrap()))
}

#[test]
fn each_child_gets_a_native_provenance_attestation_and_clients_still_pick_the_right_child() {
    let farm = Farm::start(&[AgentSpec::amd64(), AgentSpec::arm64_standin()]);
    let base_ctx = context(PER_ARCH_DOCKERFILE);
    let base = format!("{}:1", farm.repo("prov/base"));
    assert!(farm.build("linux/amd64,linux/arm64", &[&base], base_ctx.path(), &["--provenance=false"]).status.success());
    let (_, base_digest) = document(&farm, "prov/base", "1", archfarm_shared::oci::OCI_INDEX);

    let app = context(&format!("FROM {base}\nARG VERSION\nCOPY app.txt /app.txt\n"));
    std::fs::write(app.path().join("app.txt"), "app\n").unwrap();
    let tag = format!("{}:1", farm.repo("prov/app"));
    let out = farm.build(
        "linux/amd64,linux/arm64",
        &[&tag],
        app.path(),
        &["--build-arg", "VERSION=1.4", "--build-arg", "NPM_TOKEN=s3cret"],
    );
    assert!(out.status.success(), "{}", text(&out));

    // The index: the runnable children first, then one attestation manifest for each.
    let (index, _) = document(&farm, "prov/app", "1", archfarm_shared::oci::OCI_INDEX);
    let m = index["manifests"].as_array().unwrap();
    assert_eq!(m.len(), 4, "{index}");
    assert_eq!(
        (m[0]["platform"]["architecture"].as_str(), m[1]["platform"]["architecture"].as_str()),
        (Some("amd64"), Some("arm64"))
    );
    for (i, child) in [(2, &m[0]), (3, &m[1])] {
        let a = &m[i];
        assert_eq!(
            (a["platform"]["os"].as_str(), a["platform"]["architecture"].as_str()),
            (Some("unknown"), Some("unknown"))
        );
        assert_eq!(a["annotations"]["vnd.docker.reference.digest"], child["digest"], "{index}");
        assert_eq!(a["annotations"]["vnd.docker.reference.type"], "attestation-manifest");
        assert!(a["annotations"].get("vnd.docker.reference.digest").is_some() && child.get("annotations").is_none());
    }

    // The arm64 attestation: a manifest whose layer is the in-toto statement.
    let attestation = m[3]["digest"].as_str().unwrap();
    let (manifest, _) = document(&farm, "prov/app", attestation, archfarm_shared::oci::OCI_MANIFEST);
    let layer = &manifest["layers"][0];
    assert_eq!(layer["mediaType"], "application/vnd.in-toto+json");
    assert_eq!(layer["annotations"]["in-toto.io/predicate-type"], "https://slsa.dev/provenance/v1");
    let (status, _, body) =
        farm.registry_get(&format!("/v2/prov/app/blobs/{}", layer["digest"].as_str().unwrap()), "*/*");
    assert_eq!(status, 200);
    assert!(!String::from_utf8_lossy(&body).contains("s3cret"), "a secret-named build argument is not recorded");
    let statement: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let arm64_child = m[1]["digest"].as_str().unwrap();
    assert_eq!(statement["subject"][0]["digest"]["sha256"], arm64_child.trim_start_matches("sha256:"), "{statement}");
    let def = &statement["predicate"]["buildDefinition"];
    // Built natively: the builder platform is the target platform.
    assert_eq!(def["internalParameters"]["builderPlatform"], "linux/arm64", "{statement}");
    assert_eq!(def["externalParameters"]["platform"], "linux/arm64");
    assert_eq!(def["internalParameters"]["emulated"], false);
    assert_eq!(def["internalParameters"]["agent"]["name"], "arm64-1");
    let cert = certificate_sha256(&farm.dir.path().join("ca/arm64-1.pem"));
    assert_eq!(def["internalParameters"]["agent"]["certificateSha256"], cert.as_str(), "{statement}");
    assert_eq!(def["externalParameters"]["dockerfile"], "Dockerfile");
    assert_eq!(def["externalParameters"]["buildArgs"]["VERSION"], "1.4");
    let deps = def["resolvedDependencies"].as_array().unwrap();
    assert_eq!(deps[0]["uri"], format!("docker-image://{base}").as_str(), "{statement}");
    assert_eq!(deps[0]["digest"]["sha256"], base_digest.trim_start_matches("sha256:"), "the base by digest");
    assert!(deps[1]["uri"].as_str().unwrap().starts_with("archfarm-context://sha256:"), "{statement}");
    let meta = &statement["predicate"]["runDetails"]["metadata"];
    let (started, finished) = (meta["startedOn"].as_str().unwrap(), meta["finishedOn"].as_str().unwrap());
    assert!(started.ends_with('Z') && started <= finished, "{meta}");

    // skopeo and docker still choose the runnable child of their architecture.
    let copied = tempfile::tempdir().unwrap();
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false", "--override-os", "linux", "--override-arch", "arm64"])
            .arg(format!("docker://{tag}"))
            .arg(format!("dir:{}", copied.path().display())),
    );
    let chosen = std::fs::read(copied.path().join("manifest.json")).unwrap();
    assert_eq!(sha256(&chosen), arm64_child, "skopeo --override-arch arm64 chose the arm64 child");
    for (platform, arch) in [("linux/amd64", "amd64"), ("linux/arm64", "arm64")] {
        run_ok(Command::new("docker").args(["pull", "-q", "--platform", platform, &tag]));
        let inspected =
            run_ok(Command::new("docker").args(["image", "inspect", "--format", "{{.Architecture}}", &tag]));
        assert_eq!(String::from_utf8_lossy(&inspected.stdout).trim(), arch);
        run_ok(Command::new("docker").args(["image", "rm", &tag]));
    }

    // Turned off, the index lists the runnable children only.
    let off = format!("{}:off", farm.repo("prov/app"));
    std::fs::write(app.path().join("app.txt"), "app 2\n").unwrap();
    assert!(farm.build("linux/amd64,linux/arm64", &[&off], app.path(), &["--provenance=false"]).status.success());
    let (index, _) = document(&farm, "prov/app", "off", archfarm_shared::oci::OCI_INDEX);
    assert_eq!(index["manifests"].as_array().map(Vec::len), Some(2), "{index}");
}
