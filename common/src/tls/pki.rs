//! The cluster CA and the certificates it signs (rcgen, ECDSA P-256).
//!
//! Files live flat in one directory: `ca.pem` + `ca.key`, then
//! `<role>-<name>.pem` + `<role>-<name>.key` per identity. Private keys are
//! created with mode 0600; a directory we create gets 0700.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::{bad_file, read_file, Identity, TlsError, TlsFiles, COORDINATOR_SERVER_NAME};
use crate::identity::{PeerIdentity, Role};
use crate::model::validate_name;

/// File name of the cluster CA certificate inside a PKI directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the cluster CA private key inside a PKI directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// Validity of an issued certificate when the operator does not say.
pub const DEFAULT_DAYS: u32 = 365;
/// Longest validity [`issue`] accepts.
pub const MAX_DAYS: u32 = 3650;
/// Validity of the cluster CA.
const CA_DAYS: u32 = 3650;
/// Certificates start being valid this long before they are made, so that a
/// peer whose clock is a little behind accepts them at once.
const BACKDATE: Duration = Duration::from_secs(3600);

/// Creates DIR/ca.pem and DIR/ca.key (key mode 0600, dir created if missing). Refuses to overwrite an existing CA (error says so).
pub fn init_ca(dir: &Path, cluster_name: &str) -> Result<PathBuf, TlsError> {
    validate_name("cluster_name", cluster_name).map_err(TlsError::Invalid)?;
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    for path in [&cert_path, &key_path] {
        // symlink_metadata: a dangling link still counts as "something is there".
        if fs::symlink_metadata(path).is_ok() {
            return Err(TlsError::CaExists { path: path.clone() });
        }
    }
    create_dir(dir)?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, format!("Gantry CA {cluster_name}"));
    params.distinguished_name.push(DnType::OrganizationName, cluster_name);
    // Path length 0: the CA signs leaves only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, CA_DAYS)?;
    let cert = params.self_signed(&key)?;

    // Key first, both with create_new: two concurrent `init`s cannot both win.
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    if let Err(e) = write_new(&cert_path, cert.pem().as_bytes(), 0o644) {
        // Best effort: do not leave a key without its certificate, which would
        // make the next `init` refuse for no visible reason.
        let _ = fs::remove_file(&key_path);
        return Err(e);
    }
    Ok(cert_path)
}

/// Signs a certificate for role+name with the CA in DIR. Writes DIR/<role>-<name>.pem (+ .key, 0600). SANs: each `san` (IP literal -> IP SAN, else DNS SAN), the URI SAN PeerIdentity::to_uri(), and for coordinators also COORDINATOR_SERVER_NAME. Subject CN=name, OU=role. Validity ~ 1 year default (param `days`). Name validated with model::validate_name.
///
/// Issuing again for the same role and name replaces the files (that is how a
/// certificate is renewed); each file is replaced atomically.
pub fn issue(dir: &Path, role: Role, name: &str, sans: &[String], days: u32) -> Result<TlsFiles, TlsError> {
    let params = leaf_params(role, name, sans, days)?;
    let issuer = load_issuer(dir)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;

    let files = TlsFiles::in_dir(dir, role, name);
    write_replace(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_replace(&files.cert, cert.pem().as_bytes(), 0o644)?;
    Ok(files)
}

/// The cluster CA loaded once, to sign many identities in memory without
/// writing a file each: the swarm benchmark gives every simulated node a
/// certificate of its own, as a real fleet has.
pub struct CaSigner {
    issuer: Issuer<'static, KeyPair>,
    ca: CertificateDer<'static>,
}

impl CaSigner {
    /// Loads and checks the CA in `dir` (as [`issue`] does).
    pub fn load(dir: &Path) -> Result<CaSigner, TlsError> {
        let issuer = load_issuer(dir)?;
        let cert_path = dir.join(CA_CERT_FILE);
        let pem = read_file(&cert_path)?;
        let ca = CertificateDer::from_pem_slice(&pem)
            .map_err(|e| bad_file(&cert_path, format!("holds no PEM certificate: {e}")))?;
        Ok(CaSigner { issuer, ca })
    }

    /// A fresh key and a certificate for role+name, signed now, as an [`Identity`].
    pub fn identity(&self, role: Role, name: &str, days: u32) -> Result<Identity, TlsError> {
        let params = leaf_params(role, name, &[], days)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        Identity::from_signed(self.ca.clone(), cert.der().clone(), key_der)
    }
}

/// What every leaf certificate says: subject, SANs, usages and validity.
fn leaf_params(role: Role, name: &str, sans: &[String], days: u32) -> Result<CertificateParams, TlsError> {
    validate_name("name", name).map_err(TlsError::Invalid)?;
    if days == 0 || days > MAX_DAYS {
        return Err(TlsError::Invalid(format!("days: {days} is not between 1 and {MAX_DAYS}")));
    }
    let mut subject_alt_names = parse_sans(role, sans)?;
    subject_alt_names
        .push(SanType::URI(ia5("name", PeerIdentity { role, name: name.to_string() }.to_uri())?));
    if role == Role::Coordinator {
        subject_alt_names.push(SanType::DnsName(ia5("san", COORDINATOR_SERVER_NAME.to_string())?));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.distinguished_name.push(DnType::OrganizationalUnitName, role.as_str());
    params.subject_alt_names = subject_alt_names;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Coordinators serve and also dial each other (Raft); everyone else only dials.
    params.extended_key_usages = match role {
        Role::Coordinator => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        Role::Agent | Role::Operator => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, days)?;
    Ok(params)
}

/// `san` values: IP literals become IP SANs, anything else must be a DNS name.
fn parse_sans(role: Role, sans: &[String]) -> Result<Vec<SanType>, TlsError> {
    let mut out = Vec::with_capacity(sans.len() + 2);
    for san in sans {
        let parsed = match san.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                if rustls_pki_types::DnsName::try_from(san.as_str()).is_err() {
                    return Err(TlsError::Invalid(format!(
                        "san: {san:?} is neither an IP address nor a valid DNS name"
                    )));
                }
                if san.eq_ignore_ascii_case(COORDINATOR_SERVER_NAME) {
                    if role != Role::Coordinator {
                        return Err(TlsError::Invalid(format!(
                            "san: {COORDINATOR_SERVER_NAME:?} is reserved for coordinator certificates"
                        )));
                    }
                    // Added for every coordinator anyway.
                    continue;
                }
                SanType::DnsName(ia5("san", san.clone())?)
            }
        };
        if !out.contains(&parsed) {
            out.push(parsed);
        }
    }
    Ok(out)
}

fn ia5(field: &str, value: String) -> Result<rcgen::string::Ia5String, TlsError> {
    rcgen::string::Ia5String::try_from(value.as_str())
        .map_err(|e| TlsError::Invalid(format!("{field}: {value:?} is not ASCII: {e}")))
}

/// The CA in `dir`, checked: its key matches its certificate, it is a CA, and it is valid now.
fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, TlsError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    if fs::symlink_metadata(&cert_path).is_err() {
        return Err(TlsError::NoCa { dir: dir.to_path_buf() });
    }
    let cert_pem = read_file(&cert_path)?;
    let key_pem = read_file(&key_path)?;
    let key_pem =
        std::str::from_utf8(&key_pem).map_err(|_| bad_file(&key_path, "is not UTF-8 PEM".into()))?;
    let key = KeyPair::from_pem(key_pem).map_err(|e| bad_file(&key_path, format!("bad private key: {e}")))?;

    let der = CertificateDer::from_pem_slice(&cert_pem)
        .map_err(|e| bad_file(&cert_path, format!("holds no PEM certificate: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| bad_file(&cert_path, format!("not a valid X.509 certificate: {e}")))?;
    if !cert.is_ca() {
        return Err(bad_file(&cert_path, "is not a CA certificate".into()));
    }
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(bad_file(&key_path, format!("is not the key of {}", cert_path.display())));
    }
    if !cert.validity().is_valid() {
        let v = cert.validity();
        return Err(bad_file(
            &cert_path,
            format!("the CA is valid only from {} to {}", v.not_before, v.not_after),
        ));
    }
    Issuer::from_ca_cert_der(&der, key)
        .map_err(|e| bad_file(&cert_path, format!("cannot sign with this CA: {e}")))
}

/// not_before = now - BACKDATE, not_after = now + days.
fn set_validity(params: &mut CertificateParams, days: u32) -> Result<(), TlsError> {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| TlsError::Invalid("system clock: set before 1970".into()))?;
    // rcgen hands out `time::OffsetDateTime`; build it from the epoch so that
    // this crate needs no direct dependency on `time`.
    let now = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(since_epoch.as_secs());
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::from_secs(u64::from(days) * 86_400);
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| TlsError::Io { path: dir.to_path_buf(), source })
}

/// Creates `path` (which must not exist) with `mode` and writes `data`.
fn create_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path)?;
    file.write_all(data)?;
    file.sync_all()
}

/// [`create_file`] for the CA: an existing file means an existing CA.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    create_file(path, data, mode).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => TlsError::CaExists { path: path.to_path_buf() },
        _ => TlsError::Io { path: path.to_path_buf(), source },
    })
}

/// Writes `data` to a fresh temporary file with `mode` next to `path`, then
/// renames it over `path`: readers see the old file or the new one, and a key
/// is never readable by others, not even for a moment.
fn write_replace(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    // A leftover from a crashed run would make create_new fail.
    let _ = fs::remove_file(&tmp);
    create_file(&tmp, data, mode).map_err(|source| TlsError::Io { path: tmp.clone(), source })?;
    fs::rename(&tmp, path).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        TlsError::Io { path: path.to_path_buf(), source }
    })
}
