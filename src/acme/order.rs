//! One ACME order, start to finish (RFC 8555 §7.4): all of a certificate's names in one
//! order, every authorization's challenge answered and handed to the CA before waiting on
//! any (so the CA validates them concurrently), polling that honours `Retry-After`, a
//! fresh private key and CSR, and the full chain.

use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, Identifier, NewOrder, OrderStatus,
    RetryPolicy,
};
use tracing::{debug, info};

use super::AcmeError;
use super::challenge::{Presented, Solver};
use crate::cert::pair::PemPair;
use crate::config::{CertificateConfig, Domain, KeyType};

/// How long to wait for the CA to validate and to issue.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));

/// What to put in the order besides the names.
pub struct OrderOptions<'a> {
    pub profile: Option<&'a str>,
    pub replaces: Option<CertificateIdentifier<'static>>,
}

/// Orders a certificate for `cert`'s domains and answers its challenges with `solver`.
pub async fn obtain(
    account: &Account,
    directory: &str,
    cert: &CertificateConfig,
    options: OrderOptions<'_>,
    solver: &Solver,
) -> Result<PemPair, AcmeError> {
    let identifiers: Vec<Identifier> = cert
        .domains
        .iter()
        .map(|d| match d {
            Domain::Dns(name) => Identifier::Dns(name.clone()),
            Domain::Ip(ip) => Identifier::Ip(*ip),
        })
        .collect();
    let names = cert.domain_list();
    let acme_err = |e, identifier: Option<String>| AcmeError::from_acme(e, directory, identifier);

    let new_order = |replaces: Option<CertificateIdentifier<'static>>| {
        let mut order = NewOrder::new(&identifiers);
        if let Some(profile) = options.profile {
            order = order.profile(profile);
        }
        if let Some(replaces) = replaces {
            order = order.replaces(replaces);
        }
        order
    };
    let mut order = match options.replaces.clone() {
        Some(replaces) => {
            match retry_bad_nonce!(account.new_order(&new_order(Some(replaces.clone()))).await) {
                // The CA would not take `replaces` (alreadyReplaced, or a certificate another
                // account ordered): order without it rather than fail every time (SPEC).
                Err(instant_acme::Error::Api(p)) => {
                    info!(
                        domains = %names,
                        problem = p.r#type.as_deref().unwrap_or("?"),
                        "the CA refused `replaces`; ordering without it"
                    );
                    retry_bad_nonce!(account.new_order(&new_order(None)).await)
                }
                other => other,
            }
        }
        None => retry_bad_nonce!(account.new_order(&new_order(None)).await),
    }
    .map_err(|e| acme_err(e, Some(names.clone())))?;
    info!(event = "certificate_ordered", domains = %names, order = order.url(), challenge = ?solver.kind(), "ordered a certificate");

    // Answer every pending authorization first, then wait once for all of them.
    let mut presented: Vec<Presented> = Vec::new();
    let answered = answer_challenges(&mut order, directory, solver, &mut presented).await;
    let ready = match answered {
        Ok(()) => wait_ready(&mut order, directory).await,
        Err(e) => Err(e),
    };
    for p in presented {
        solver.clean_up(p).await;
    }
    ready?;

    let key = generate_key(cert.key_type)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| AcmeError::Other(e.to_string()))?;
    params.subject_alt_names = cert
        .domains
        .iter()
        .map(|d| match d {
            Domain::Dns(name) => name
                .clone()
                .try_into()
                .map(rcgen::SanType::DnsName)
                .map_err(|e: rcgen::Error| AcmeError::Other(e.to_string())),
            Domain::Ip(ip) => Ok(rcgen::SanType::IpAddress(*ip)),
        })
        .collect::<Result<_, _>>()?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| AcmeError::Other(format!("cannot make the CSR: {e}")))?;
    retry_bad_nonce!(order.finalize_csr(csr.der()).await)
        .map_err(|e| acme_err(e, Some(names.clone())))?;
    let chain = retry_bad_nonce!(order.poll_certificate(&POLL).await)
        .map_err(|e| acme_err(e, Some(names.clone())))?;
    debug!(domains = %names, "certificate downloaded");
    Ok(PemPair {
        cert_pem: chain,
        key_pem: key.serialize_pem(),
    })
}

async fn answer_challenges(
    order: &mut instant_acme::Order,
    directory: &str,
    solver: &Solver,
    presented: &mut Vec<Presented>,
) -> Result<(), AcmeError> {
    let mut done: Vec<String> = Vec::new();
    // A badNonce while walking the authorizations restarts the walk; those already
    // answered are skipped.
    'walk: for _ in 0..super::NONCE_RETRIES {
        let mut authorizations = order.authorizations();
        while let Some(next) = authorizations.next().await {
            let mut authz = match next {
                Ok(a) => a,
                Err(e) if super::is_bad_nonce(&e) => continue 'walk,
                Err(e) => return Err(AcmeError::from_acme(e, directory, None)),
            };
            let url = authz.url().to_string();
            if done.contains(&url) {
                continue;
            }
            let identifier = authz.identifier().identifier.clone();
            let wildcard = authz.identifier().wildcard;
            let shown = match &identifier {
                Identifier::Dns(n) if wildcard => format!("*.{n}"),
                Identifier::Dns(n) => n.clone(),
                Identifier::Ip(ip) => ip.to_string(),
                other => format!("{other:?}"),
            };
            match authz.status {
                AuthorizationStatus::Valid => {
                    done.push(url);
                    continue;
                }
                AuthorizationStatus::Pending => {}
                status => {
                    return Err(AcmeError::Challenge {
                        identifier: shown,
                        reason: format!("the authorization is {status:?}"),
                    });
                }
            }
            let challenge_type = solver.challenge_type();
            let Some(mut challenge) = authz.challenge(challenge_type.clone()) else {
                return Err(AcmeError::Challenge {
                    identifier: shown,
                    reason: format!("the CA offers no {challenge_type:?} challenge for it"),
                });
            };
            let token = challenge.token.clone();
            let key_authorization = challenge.key_authorization();
            let p = solver
                .present(&identifier, wildcard, &token, &key_authorization)
                .await
                .map_err(|reason| AcmeError::Challenge {
                    identifier: shown.clone(),
                    reason,
                })?;
            presented.push(p);
            match retry_bad_nonce!(challenge.set_ready().await) {
                Ok(()) => {}
                Err(e) => return Err(AcmeError::from_acme(e, directory, Some(shown))),
            }
            debug!(identifier = %shown, "challenge ready");
            done.push(url);
        }
        return Ok(());
    }
    Err(AcmeError::Other(
        "the CA kept rejecting nonces (badNonce)".into(),
    ))
}

/// Waits until the order is ready; when it turns invalid, finds out which name failed and
/// why from the authorizations.
async fn wait_ready(order: &mut instant_acme::Order, directory: &str) -> Result<(), AcmeError> {
    let status = retry_bad_nonce!(order.poll_ready(&POLL).await)
        .map_err(|e| AcmeError::from_acme(e, directory, None))?;
    match status {
        OrderStatus::Ready | OrderStatus::Valid | OrderStatus::Processing => Ok(()),
        _ => {
            let mut authorizations = order.authorizations();
            while let Some(Ok(mut authz)) = authorizations.next().await {
                // The cached state is from before validation.
                let _ = authz.refresh().await;
                if authz.status == AuthorizationStatus::Invalid {
                    let identifier = authz.identifier().to_string();
                    let problem = authz.challenges.iter().find_map(|c| c.error.clone());
                    return Err(match problem {
                        Some(problem) => AcmeError::Problem {
                            identifier: Some(identifier),
                            problem,
                        },
                        None => AcmeError::Challenge {
                            identifier,
                            reason: "the CA could not validate it".into(),
                        },
                    });
                }
            }
            let problem = order.state().error.clone();
            Err(match problem {
                Some(problem) => AcmeError::Problem {
                    identifier: None,
                    problem,
                },
                None => AcmeError::Other(format!("the order became {status:?}")),
            })
        }
    }
}

fn generate_key(key_type: KeyType) -> Result<rcgen::KeyPair, AcmeError> {
    let key = match key_type {
        KeyType::EcdsaP256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyType::EcdsaP384 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyType::Rsa2048 => {
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        }
    };
    key.map_err(|e| AcmeError::Other(format!("cannot generate a key: {e}")))
}
