//! The images a Dockerfile reads, as far as they can be told before it is built: the frontend
//! of its `# syntax=` directive, each stage's `FROM`, `COPY --from` and `ADD --from` of an image,
//! and `RUN --mount=…,from=IMAGE`, also inside `ONBUILD`. Build arguments and the global
//! `ARG` defaults are put into names as BuildKit does; a name that still holds a variable is
//! returned as it is, so that a caller can refuse what it cannot tell.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::Path;

/// The Dockerfile read from the context, at most.
pub const MAX_DOCKERFILE_BYTES: u64 = 1 << 20;

/// One image a Dockerfile reads, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUse {
    /// The image as named, build arguments put in.
    pub image: String,
    /// What reads it: `FROM`, `COPY --from`, `ADD --from`, `RUN --mount` or `# syntax`.
    pub how: &'static str,
    /// The line of the Dockerfile it is on, from 1.
    pub line: usize,
}

/// Every image `dockerfile` reads, in order, repeats included: not `scratch`, and not a stage
/// (by name or number).
pub fn references(dockerfile: &str, build_args: &[(String, String)]) -> Vec<ImageUse> {
    let lines = logical_lines(dockerfile);
    let stages: Vec<String> = lines
        .iter()
        .filter_map(|(_, l)| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let from = words.first()?.eq_ignore_ascii_case("FROM");
            let rest: Vec<&&str> = words[1..].iter().filter(|w| !w.starts_with("--")).collect();
            (from && rest.len() >= 3 && rest[1].eq_ignore_ascii_case("AS")).then(|| rest[2].to_ascii_lowercase())
        })
        .collect();
    let is_stage = |name: &str| stages.contains(&name.to_ascii_lowercase()) || name.parse::<usize>().is_ok();
    let mut vars: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    if let Some(frontend) = syntax(dockerfile) {
        out.push(ImageUse { image: frontend.0, how: "# syntax", line: frontend.1 });
    }
    let (mut seen_from, mut named) = (false, 0);
    for (line, text) in &lines {
        let mut words: Vec<&str> = text.split_whitespace().collect();
        if words.first().is_some_and(|w| w.eq_ignore_ascii_case("ONBUILD")) {
            words.remove(0);
        }
        let Some(instruction) = words.first().map(|w| w.to_ascii_uppercase()) else { continue };
        let flags = words[1..].iter().take_while(|w| w.starts_with("--"));
        match instruction.as_str() {
            "ARG" if !seen_from => {
                for arg in &words[1..] {
                    let (name, default) = arg.split_once('=').unwrap_or((arg, ""));
                    let given = build_args.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
                    vars.insert(name.to_owned(), given.unwrap_or_else(|| default.trim_matches('"').to_owned()));
                }
            }
            "FROM" => {
                seen_from = true;
                let mut rest = words[1..].iter().filter(|w| !w.starts_with("--"));
                let Some(image) = rest.next().map(|i| substitute(i, &vars)) else { continue };
                // A FROM names an earlier stage, or an image.
                let earlier = stages[..named].contains(&image.to_ascii_lowercase());
                if rest.next().is_some_and(|a| a.eq_ignore_ascii_case("AS")) && rest.next().is_some() {
                    named += 1;
                }
                if !image.eq_ignore_ascii_case("scratch") && !earlier {
                    out.push(ImageUse { image, how: "FROM", line: *line });
                }
            }
            "COPY" | "ADD" => {
                for flag in flags {
                    let Some(from) = flag.strip_prefix("--from=") else { continue };
                    let from = substitute(from.trim_matches('"'), &vars);
                    if !is_stage(&from) {
                        let how = if instruction == "COPY" { "COPY --from" } else { "ADD --from" };
                        out.push(ImageUse { image: from, how, line: *line });
                    }
                }
            }
            "RUN" => {
                for flag in flags {
                    let Some(mount) = flag.strip_prefix("--mount=") else { continue };
                    let from = mount.split(',').find_map(|kv| kv.trim_matches('"').strip_prefix("from="));
                    if let Some(from) = from.map(|f| substitute(f, &vars)).filter(|f| !is_stage(f)) {
                        out.push(ImageUse { image: from, how: "RUN --mount", line: *line });
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The line of the first `ADD` (or `ONBUILD ADD`) whose source is, or may be, remote: a URL, a
/// Git repository, or a word holding a variable. BuildKit asks the remote again on every build, so such a build's result is not
/// known from its inputs alone.
pub fn remote_source(dockerfile: &str) -> Option<usize> {
    logical_lines(dockerfile).into_iter().find_map(|(line, text)| {
        let mut words = text.split_whitespace().peekable();
        if words.peek().is_some_and(|w| w.eq_ignore_ascii_case("ONBUILD")) {
            words.next();
        }
        let add = words.next().is_some_and(|w| w.eq_ignore_ascii_case("ADD"));
        // A source named through a variable may be a URL: counted as one.
        let remote = |w: &str| {
            let w = w.trim_matches(|c| c == '"' || c == '[' || c == ']' || c == ',');
            w.contains("://") || w.starts_with("git@") || w.contains('$')
        };
        let sources: Vec<&str> = words.filter(|w| !w.starts_with("--")).collect();
        (add && sources.iter().any(|w| remote(w))).then_some(line)
    })
}

/// The frontend image of a `# syntax=` parser directive, and its line: directives come first,
/// before any instruction or other comment.
fn syntax(dockerfile: &str) -> Option<(String, usize)> {
    for (i, line) in dockerfile.lines().enumerate() {
        let directive = line.trim().strip_prefix('#')?;
        let (key, value) = directive.split_once('=')?;
        if key.trim().eq_ignore_ascii_case("syntax") {
            return Some((value.trim().to_owned(), i + 1));
        }
    }
    None
}

/// The Dockerfile's instructions, one per entry with the line each starts on: comments
/// dropped, continuations joined.
fn logical_lines(dockerfile: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in dockerfile.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') {
            continue;
        }
        if current.is_empty() {
            start = i + 1;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                out.push((start, std::mem::take(&mut current)));
            }
        }
    }
    out.push((start, current));
    out
}

/// `$NAME` and `${NAME}` replaced from `vars` (an unknown name is left as it is).
fn substitute(word: &str, vars: &HashMap<String, String>) -> String {
    let mut out = word.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), value).replace(&format!("${name}"), value);
    }
    out
}

/// Reads `dockerfile` out of the context tarball at `context`, at most
/// [`MAX_DOCKERFILE_BYTES`] of it.
pub fn read_dockerfile(context: &Path, dockerfile: &str) -> Option<String> {
    let file = std::fs::File::open(context).ok()?;
    let mut archive = tar::Archive::new(file);
    let wanted = dockerfile.trim_start_matches("./");
    for entry in archive.entries_with_seek().ok()? {
        let entry = entry.ok()?;
        let path = entry.path().ok()?.to_string_lossy().trim_start_matches("./").to_owned();
        if path == wanted {
            let mut text = String::new();
            entry.take(MAX_DOCKERFILE_BYTES).read_to_string(&mut text).ok()?;
            return Some(text);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_add_of_a_url_or_a_repository_is_found_and_a_local_one_is_not() {
        assert_eq!(remote_source("FROM a\nADD app.tar /app/\nCOPY x /x\n"), None);
        assert_eq!(remote_source("FROM a\nRUN echo https://x\nADD https://example.com/a.tgz /a\n"), Some(3));
        assert_eq!(remote_source("FROM a\nadd --checksum=sha256:0 \\\n  git@github.com:o/r.git /src\n"), Some(2));
        assert_eq!(remote_source("FROM a\nONBUILD ADD [\"http://h/f\", \"/f\"]\n"), Some(2));
        assert_eq!(remote_source("FROM a\nARG SRC=https://h/f\nADD ${SRC} /x\n"), Some(3));
    }

    fn images(dockerfile: &str, args: &[(&str, &str)]) -> Vec<(String, &'static str, usize)> {
        let args: Vec<(String, String)> = args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        references(dockerfile, &args).into_iter().map(|u| (u.image, u.how, u.line)).collect()
    }

    #[test]
    fn every_image_a_dockerfile_reads_is_found_with_its_line() {
        let dockerfile = "# syntax=reg.example/team/frontend:1\nARG BASE=reg.example/team/base:1\n\
            FROM --platform=$BUILDPLATFORM golang:1.22 AS build\n\
            RUN --mount=type=bind,from=reg.example/other/tools:2,target=/t \\\n  --mount=type=cache,target=/c make\n\
            FROM ${BASE} AS final\nCOPY --from=build /out /out\nCOPY --from=reg.example/other/secret:1 /k /k\n\
            ADD --chown=1 --from=1 /x /x\nONBUILD COPY --from=reg.example/other/trigger /y /y\nFROM scratch\nFROM $UNKNOWN\n";
        assert_eq!(
            images(dockerfile, &[]),
            [
                ("reg.example/team/frontend:1".to_owned(), "# syntax", 1),
                ("golang:1.22".to_owned(), "FROM", 3),
                ("reg.example/other/tools:2".to_owned(), "RUN --mount", 4),
                ("reg.example/team/base:1".to_owned(), "FROM", 6),
                ("reg.example/other/secret:1".to_owned(), "COPY --from", 8),
                ("reg.example/other/trigger".to_owned(), "COPY --from", 10),
                ("$UNKNOWN".to_owned(), "FROM", 12),
            ]
        );
        assert_eq!(images("ARG BASE=a\nFROM ${BASE}\n", &[("BASE", "r:5000/b:2")])[0].0, "r:5000/b:2");
    }

    #[test]
    fn a_stage_named_later_is_a_stage_and_case_does_not_matter() {
        let dockerfile = "from alpine:3.20 as Base\nFrom base\ncopy --from=LATER /a /a\nFROM busybox AS later\n";
        assert_eq!(images(dockerfile, &[]), [("alpine:3.20".to_owned(), "FROM", 1), ("busybox".to_owned(), "FROM", 4)]);
    }
}
