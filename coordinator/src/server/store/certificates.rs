//! Agent certificates by serial: who holds which, which key, until when, which platforms it may
//! declare, and whether it is revoked. Revocation is by certificate, so revoking an impostor
//! never revokes the real host, and a name is issued to one live certificate at a time.

use super::{Result, Store};
use archfarm_shared::clock::now_ms;
use archfarm_shared::pki::CertificateInfo;
use archfarm_shared::{AgentName, Platform};
use rusqlite::{params, Connection, OptionalExtension};

/// How a certificate came to be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Signed at enrollment with a join token.
    Enrolled,
    /// Signed for an enrolled agent renewing its certificate.
    Renewed,
    /// Issued offline (`archfarm ca issue-agent`), recorded when it first connected.
    Seen,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Enrolled => "enrolled",
            Origin::Renewed => "renewed",
            Origin::Seen => "seen",
        }
    }
}

/// A recorded certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCertificate {
    /// Platforms its holder may declare; any when empty.
    pub platforms: Vec<Platform>,
    /// Why it was revoked, if it was.
    pub revoked: Option<String>,
}

/// What a join token allows: a name and platforms, when it was bound to them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binding {
    /// The only name it enrolls.
    pub name: Option<AgentName>,
    /// The only platforms its agent may declare; any when empty.
    pub platforms: Vec<Platform>,
}

fn platforms_text(platforms: &[Platform]) -> String {
    platforms.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
}

/// The platforms a binding allows. One that no longer parses is an error, never a narrower
/// list (an empty one would allow every platform).
fn platforms_of(text: &str) -> Result<Vec<Platform>> {
    text.split_whitespace().map(|p| super::parse(p, "allowed platform")).collect()
}

/// A live (unrevoked, unexpired) certificate of `name`, other than `except`: its serial.
fn live_serial(c: &Connection, name: &str, except: &str) -> rusqlite::Result<Option<String>> {
    c.query_row(
        "SELECT serial FROM certificates WHERE name = ?1 AND serial != ?2 AND revoked_ms IS NULL AND expires_ms > ?3",
        params![name, except, now_ms() as i64],
        |r| r.get(0),
    )
    .optional()
}

fn insert(
    c: &Connection,
    cert: &CertificateInfo,
    origin: Origin,
    platforms: &str,
    replaces: Option<&str>,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT OR IGNORE INTO certificates (serial, name, key_sha256, issued_ms, expires_ms, platforms, origin, replaces) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            cert.serial,
            cert.name,
            cert.key_sha256,
            now_ms() as i64,
            cert.not_after_ms as i64,
            platforms,
            origin.as_str(),
            replaces
        ],
    )?;
    Ok(())
}

impl Store {
    /// Records a join token (by hash) valid until `expires_ms`, bound as `binding` says.
    pub async fn add_join_token(&self, hash: &str, expires_ms: u64, binding: &Binding) -> Result<()> {
        self.execute(
            "INSERT INTO join_tokens (hash, expires_ms, name, platforms) VALUES (?1, ?2, ?3, ?4)",
            (
                hash.to_owned(),
                expires_ms as i64,
                binding.name.as_ref().map(ToString::to_string),
                platforms_text(&binding.platforms),
            ),
        )
        .await?;
        Ok(())
    }

    /// Whether `name` may enroll now: no live certificate holds it. Checked again, atomically,
    /// by [`Store::enroll`]; this answer only spares signing for a request bound to fail.
    pub async fn name_taken(&self, name: &AgentName) -> Result<Option<String>> {
        let name = name.to_string();
        self.read(move |c| Ok(live_serial(c, &name, "")?)).await
    }

    /// Spends the join token `hash` on `cert` and records the certificate, in one transaction:
    /// the token must be unused and unexpired, bound (if at all) to this name, and the name must
    /// hold no live certificate. Nothing is spent when any of that fails.
    pub async fn enroll(&self, hash: &str, cert: &CertificateInfo) -> Result<std::result::Result<(), String>> {
        let (hash, cert) = (hash.to_owned(), cert.clone());
        self.writer
            .write(move |c| {
                let platforms = match usable_token(c, &hash, &cert.name)? {
                    Ok(platforms) => platforms,
                    Err(why) => return Ok(Err(why)),
                };
                if let Some(serial) = live_serial(c, &cert.name, "")? {
                    return Ok(Err(format!(
                        "agent name {:?} is already held by a live certificate (serial {serial}); enroll under \
                         another name, or revoke that one first with `archfarm agents revoke {}`",
                        cert.name, cert.name
                    )));
                }
                c.execute(
                    "UPDATE join_tokens SET used_ms = ?2, used_by = ?3 WHERE hash = ?1 AND used_ms IS NULL",
                    params![hash, now_ms() as i64, cert.name],
                )?;
                insert(c, &cert, Origin::Enrolled, &platforms, None)?;
                Ok(Ok(()))
            })
            .await
    }

    /// Whether join token `hash` could enroll agent `name` now (known, unused, unexpired, and
    /// bound to that name if bound at all), without spending it: what is checked before an
    /// enrolling peer learns anything else.
    pub async fn join_token_usable(&self, hash: &str, name: &str) -> Result<std::result::Result<(), String>> {
        let (hash, name) = (hash.to_owned(), name.to_owned());
        self.read(move |c| Ok(usable_token(c, &hash, &name)?.map(|_| ()))).await
    }

    /// Records `new`, renewing `old`: same name and platforms. `old` must still be live; a
    /// successor of it that never connected is revoked (one pending renewal at a time), and
    /// `old` itself is revoked when `new` is first used ([`Store::connected`]).
    pub async fn renew(&self, old: &str, new: &CertificateInfo) -> Result<std::result::Result<(), String>> {
        let (old, new) = (old.to_owned(), new.clone());
        self.writer
            .write(move |c| {
                let row: Option<(String, Option<i64>)> = c
                    .query_row("SELECT platforms, revoked_ms FROM certificates WHERE serial = ?1", params![old], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()?;
                let platforms = match row {
                    Some((platforms, None)) => platforms,
                    Some((_, Some(_))) => return Ok(Err(format!("certificate {old} was revoked; it renews nothing"))),
                    None => return Ok(Err(format!("certificate {old} is not on record"))),
                };
                c.execute(
                    "UPDATE certificates SET revoked_ms = ?2, revoked_why = 'replaced by a later renewal' \
                     WHERE replaces = ?1 AND revoked_ms IS NULL",
                    params![old, now_ms() as i64],
                )?;
                insert(c, &new, Origin::Renewed, &platforms, Some(&old))?;
                Ok(Ok(()))
            })
            .await
    }

    /// An agent connected with `cert`: records it if it was issued offline, retires the
    /// certificate it renewed, and returns what is recorded of it.
    pub async fn connected(&self, cert: &CertificateInfo) -> Result<StoredCertificate> {
        let cert = cert.clone();
        self.writer
            .write(move |c| {
                insert(c, &cert, Origin::Seen, "", None)?;
                c.execute(
                    "UPDATE certificates SET revoked_ms = ?2, revoked_why = 'renewed' \
                     WHERE serial = (SELECT replaces FROM certificates WHERE serial = ?1) AND revoked_ms IS NULL",
                    params![cert.serial, now_ms() as i64],
                )?;
                let (platforms, revoked): (String, Option<String>) = c.query_row(
                    "SELECT platforms, CASE WHEN revoked_ms IS NULL THEN NULL ELSE COALESCE(revoked_why, 'revoked') END \
                     FROM certificates WHERE serial = ?1",
                    params![cert.serial],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                Ok(StoredCertificate { platforms: platforms_of(&platforms)?, revoked })
            })
            .await
    }

    /// Binds certificate `serial`, bound to no platform yet, to `platforms`: it may declare no
    /// other from now on (renewals included).
    pub async fn bind_platforms(&self, serial: &str, platforms: &[Platform]) -> Result<()> {
        let (serial, platforms) = (serial.to_owned(), platforms_text(platforms));
        self.writer
            .write(move |c| {
                c.execute(
                    "UPDATE certificates SET platforms = ?2 WHERE serial = ?1 AND platforms = ''",
                    params![serial, platforms],
                )?;
                Ok(())
            })
            .await
    }

    /// What is recorded of a certificate, if anything.
    pub async fn certificate(&self, serial: &str) -> Result<Option<StoredCertificate>> {
        let serial = serial.to_owned();
        self.read(move |c| {
            let row: Option<(String, Option<String>)> = c
                .query_row(
                    "SELECT platforms, CASE WHEN revoked_ms IS NULL THEN NULL ELSE COALESCE(revoked_why, 'revoked') END \
                     FROM certificates WHERE serial = ?1",
                    params![serial],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            row.map(|(platforms, revoked)| Ok(StoredCertificate { platforms: platforms_of(&platforms)?, revoked }))
                .transpose()
        })
        .await
    }

    /// Revokes `name`'s certificates: the one with `serial` and every renewal descended from
    /// it, or every live one. Returns the serials revoked.
    pub async fn revoke_certificates(&self, name: &AgentName, serial: Option<&str>) -> Result<Vec<String>> {
        let (name, serial) = (name.to_string(), serial.map(str::to_ascii_lowercase));
        self.writer
            .write(move |c| {
                let mut stmt = c.prepare(
                    "WITH RECURSIVE line(serial) AS ( \
                         SELECT serial FROM certificates WHERE name = ?1 AND (?2 IS NULL OR serial = ?2) \
                         UNION SELECT c.serial FROM certificates c JOIN line ON c.replaces = line.serial) \
                     UPDATE certificates SET revoked_ms = ?3, revoked_why = 'revoked' \
                     WHERE serial IN line AND revoked_ms IS NULL RETURNING serial",
                )?;
                let serials = stmt
                    .query_map(params![name, serial, now_ms() as i64], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()?;
                Ok(serials)
            })
            .await
    }
}

/// Checks join token `hash` for agent `name`; `Ok(Ok(platforms))` with the platforms it allows.
fn usable_token(c: &Connection, hash: &str, name: &str) -> rusqlite::Result<std::result::Result<String, String>> {
    let row: Option<(i64, Option<i64>, Option<String>, String)> = c
        .query_row("SELECT expires_ms, used_ms, name, platforms FROM join_tokens WHERE hash = ?1", params![hash], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    Ok(match row {
        None => Err("unknown join token".to_owned()),
        Some((_, Some(_), _, _)) => Err("this join token was already used".to_owned()),
        Some((expires, None, _, _)) if expires as u64 <= now_ms() => Err("this join token has expired".to_owned()),
        Some((_, None, Some(bound), _)) if bound != name => Err(format!("this join token is for agent {bound:?} only")),
        Some((_, None, _, platforms)) => Ok(platforms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(name: &str, serial: &str) -> CertificateInfo {
        CertificateInfo {
            name: name.into(),
            serial: serial.into(),
            key_sha256: format!("key-{serial}"),
            not_after_ms: now_ms() + 86_400_000,
            sha256: format!("cert-{serial}"),
        }
    }

    #[tokio::test]
    async fn one_live_certificate_per_name_bound_tokens_and_revocation_by_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        let amd: Platform = "linux/amd64".parse().unwrap();
        let far = now_ms() + 60_000;
        s.add_join_token("t1", far, &Binding::default()).await.unwrap();
        s.add_join_token("t2", far, &Binding::default()).await.unwrap();
        let bound = Binding { name: Some("amd64-7".parse().unwrap()), platforms: vec![amd.clone()] };
        s.add_join_token("t3", far, &bound).await.unwrap();

        assert_eq!(s.enroll("t1", &cert("amd64-1", "01")).await.unwrap(), Ok(()));
        // The impostor: same name, a fresh token. Refused, and its token is not spent.
        let err = s.enroll("t2", &cert("amd64-1", "02")).await.unwrap().unwrap_err();
        assert!(err.contains("already held by a live certificate (serial 01)"), "{err}");
        assert_eq!(s.enroll("t2", &cert("amd64-2", "03")).await.unwrap(), Ok(()));
        // A bound token enrolls only its name, with only its platforms.
        let err = s.enroll("t3", &cert("amd64-8", "04")).await.unwrap().unwrap_err();
        assert!(err.contains("for agent \"amd64-7\" only"), "{err}");
        assert_eq!(s.enroll("t3", &cert("amd64-7", "05")).await.unwrap(), Ok(()));
        assert_eq!(s.connected(&cert("amd64-7", "05")).await.unwrap().platforms, vec![amd]);

        // Revoking one certificate leaves the other holder of the name alone.
        let offline = cert("amd64-1", "0f");
        assert_eq!(s.connected(&offline).await.unwrap().revoked, None);
        assert_eq!(s.revoke_certificates(&"amd64-1".parse().unwrap(), Some("0f")).await.unwrap(), ["0f"]);
        assert!(s.certificate("0f").await.unwrap().unwrap().revoked.is_some());
        assert_eq!(s.certificate("01").await.unwrap().unwrap().revoked, None);

        // Renewal: the old certificate lives until the new one connects; a revoked one renews
        // nothing.
        assert!(s.renew("0f", &cert("amd64-1", "1f")).await.unwrap().unwrap_err().contains("was revoked"));
        s.renew("01", &cert("amd64-1", "11")).await.unwrap().unwrap();
        assert_eq!(s.certificate("01").await.unwrap().unwrap().revoked, None);
        s.connected(&cert("amd64-1", "11")).await.unwrap();
        assert_eq!(s.certificate("01").await.unwrap().unwrap().revoked.as_deref(), Some("renewed"));

        // Renewing again and again leaves one pending successor, and revoking a serial revokes
        // what was renewed from it: an impostor cannot renew its way out of a revocation.
        s.renew("11", &cert("amd64-1", "21")).await.unwrap().unwrap();
        s.renew("11", &cert("amd64-1", "22")).await.unwrap().unwrap();
        assert!(s.certificate("21").await.unwrap().unwrap().revoked.is_some(), "the earlier pending renewal");
        assert_eq!(s.revoke_certificates(&"amd64-1".parse().unwrap(), Some("11")).await.unwrap().len(), 2);
        assert!(s.certificate("22").await.unwrap().unwrap().revoked.is_some());
        s.renew("01", &cert("amd64-1", "11")).await.unwrap().unwrap_err();

        // Revoking by name frees the name for a new enrollment.
        assert_eq!(s.name_taken(&"amd64-1".parse().unwrap()).await.unwrap(), None);
    }
}
