//! The TokenReview authenticator against the fake API server: answers,
//! caching (TTL, token expiry, bound, single flight) and outages.

use fake_apiserver::FakeApi;
use fake_apiserver::store::TokenAnswer;
use meshroot::auth::{AuthError, Authenticator, BearerToken, Credentials, PodRef, Rejection, Unavailable};
use meshroot::k8s::tokenreview::{TokenReviewAuthenticator, TokenReviewConfig};
use std::sync::Arc;
use std::time::Duration;

fn creds(token: &str) -> Credentials {
    Credentials {
        bearer_token: Some(BearerToken::new(token.into())),
        cluster_id: "Kubernetes".into(),
        ..Default::default()
    }
}

fn authenticator(fake: &FakeApi, config: TokenReviewConfig) -> TokenReviewAuthenticator {
    TokenReviewAuthenticator::new(fake.client(), config)
}

/// A JWT-shaped token whose payload says it expires `secs` from now.
fn jwt_expiring_in(secs: u64) -> String {
    use base64::Engine as _;
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + secs;
    let enc = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.sig", enc(serde_json::json!({"alg": "RS256"})), enc(serde_json::json!({"exp": exp})))
}

#[tokio::test]
async fn a_bound_service_account_token_names_the_caller_and_pod() {
    let fake = FakeApi::new();
    fake.add_service_account_token("t1", "bookinfo", "reviews", Some(("reviews-v1-abc", "pod-uid-1")), &["istio-ca"]);
    let a = authenticator(&fake, TokenReviewConfig::default());
    let caller = a.authenticate(&creds("t1")).await.unwrap().unwrap();
    assert_eq!((caller.namespace.as_str(), caller.service_account.as_str()), ("bookinfo", "reviews"));
    assert_eq!(caller.pod, Some(PodRef { name: "reviews-v1-abc".into(), uid: "pod-uid-1".into() }));
    assert_eq!(caller.cluster_id, "Kubernetes");
    assert_eq!(caller.node, None, "this token names no node");
    fake.add_node_bound_token("t2", "bookinfo", "reviews", ("reviews-v1-abc", "pod-uid-1"), "worker-3");
    assert_eq!(a.authenticate(&creds("t2")).await.unwrap().unwrap().node.as_deref(), Some("worker-3"));
    // Cached: a second request makes no second TokenReview.
    a.authenticate(&creds("t1")).await.unwrap().unwrap();
    assert_eq!(fake.token_reviews(), 2, "one per token");
    assert_eq!(a.authenticate(&Credentials::default()).await, Ok(None));
}

#[tokio::test]
async fn rejections_name_the_reason_and_are_remembered_briefly() {
    let fake = FakeApi::new();
    fake.add_service_account_token("wrong-aud", "ns", "sa", None, &["other-audience"]);
    fake.add_token(
        "admin",
        TokenAnswer {
            username: "kubernetes-admin".into(),
            uid: "u".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
            extra: Default::default(),
            audiences: vec![],
            ..Default::default()
        },
    );
    fake.add_token(
        "bad-name",
        TokenAnswer {
            username: "system:serviceaccount:only-ns".into(),
            uid: "u".into(),
            groups: vec!["system:serviceaccounts".into()],
            extra: Default::default(),
            audiences: vec![],
            ..Default::default()
        },
    );
    let a = authenticator(
        &fake,
        TokenReviewConfig { negative_cache_ttl: Duration::from_millis(300), ..Default::default() },
    );
    for (token, why) in [
        ("nope", "invalid bearer token"),
        ("wrong-aud", "audiences"),
        ("admin", "not a service account"),
        ("bad-name", "not a service account"),
    ] {
        match a.authenticate(&creds(token)).await {
            Err(AuthError::Rejected(m)) => assert!(m.to_string().contains(why), "{token}: {m}"),
            other => panic!("{token}: {other:?}"),
        }
    }
    // Within the negative TTL a rejection is answered from cache, with its reason.
    match a.authenticate(&creds("nope")).await {
        Err(AuthError::Rejected(Rejection::TokenReview(m))) => assert!(m.contains("invalid bearer token"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.token_reviews(), 4, "a rejection is remembered for the negative TTL");
    assert_eq!((a.cached(), a.cached_rejections()), (0, 4), "rejections stay out of the accepted cache");
    // After it, the token is asked about again (it may have become valid).
    tokio::time::sleep(Duration::from_millis(400)).await;
    fake.add_service_account_token("nope", "ns", "late", None, &[]);
    assert_eq!(a.authenticate(&creds("nope")).await.unwrap().unwrap().service_account, "late");
    assert_eq!(fake.token_reviews(), 5);
}

#[tokio::test]
async fn one_bad_token_in_a_loop_costs_one_token_review() {
    let fake = FakeApi::new();
    let a = Arc::new(authenticator(&fake, TokenReviewConfig::default()));
    for _ in 0..50 {
        assert!(matches!(a.authenticate(&creds("random-junk")).await, Err(AuthError::Rejected(_))));
    }
    // Concurrently, too.
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move { a.authenticate(&creds("other-junk")).await })
        })
        .collect();
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Err(AuthError::Rejected(_))));
    }
    assert_eq!(fake.token_reviews(), 2, "one review per bad token within the negative TTL");
}

#[tokio::test]
async fn distinct_bad_tokens_never_evict_a_good_cached_result() {
    let fake = FakeApi::new();
    fake.add_service_account_token("good", "ns", "sa", None, &[]);
    let a = Arc::new(authenticator(
        &fake,
        TokenReviewConfig { max_entries: 3, negative_max_entries: 5, ..Default::default() },
    ));
    a.authenticate(&creds("good")).await.unwrap().unwrap();
    // One after another ...
    for i in 0..50 {
        assert!(matches!(a.authenticate(&creds(&format!("junk-{i}"))).await, Err(AuthError::Rejected(_))));
        assert!(a.cached_rejections() <= 5, "{} rejections remembered", a.cached_rejections());
    }
    // ... and all at once, while their reviews are in flight.
    let tasks: Vec<_> = (50..100)
        .map(|i| {
            let a = a.clone();
            tokio::spawn(async move { a.authenticate(&creds(&format!("junk-{i}"))).await })
        })
        .collect();
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Err(AuthError::Rejected(_))));
    }
    assert!(a.cached_rejections() <= 5, "{} rejections remembered", a.cached_rejections());
    assert_eq!(fake.token_reviews(), 101);
    a.authenticate(&creds("good")).await.unwrap().unwrap();
    assert_eq!(fake.token_reviews(), 101, "the good token is still answered from cache");
}

#[tokio::test]
async fn an_unreachable_api_is_not_remembered_as_a_rejection() {
    let fake = FakeApi::new();
    fake.add_service_account_token("t", "ns", "sa", None, &[]);
    let a = authenticator(&fake, TokenReviewConfig::default());
    fake.set_outage(true);
    assert!(matches!(a.authenticate(&creds("t")).await, Err(AuthError::Unavailable(_))));
    fake.set_outage(false);
    assert_eq!(a.cached_rejections(), 0);
    assert!(a.authenticate(&creds("t")).await.unwrap().is_some(), "asked again once the API is back");
}

#[tokio::test]
async fn a_user_without_authenticated_true_is_refused() {
    let fake = FakeApi::new();
    fake.add_service_account_token("unauthenticated", "ns", "sa", None, &[]);
    fake.set_token_answer("unauthenticated", |t| t.authenticated = false);
    let a = authenticator(&fake, TokenReviewConfig::default());
    match a.authenticate(&creds("unauthenticated")).await {
        Err(AuthError::Rejected(Rejection::TokenReview(m))) => assert!(m.contains("not valid"), "{m}"),
        other => panic!("an answer naming a user but not authenticated must be refused: {other:?}"),
    }
}

#[tokio::test]
async fn an_answer_for_other_audiences_is_refused() {
    let fake = FakeApi::new();
    fake.add_service_account_token("elsewhere", "ns", "sa", None, &[]);
    fake.set_token_answer("elsewhere", |t| t.answered_audiences = Some(vec!["https://kubernetes.default.svc".into()]));
    fake.add_service_account_token("silent", "ns", "sa", None, &[]);
    fake.set_token_answer("silent", |t| t.answered_audiences = Some(vec![]));
    fake.add_service_account_token("one-of-them", "ns", "sa", None, &[]);
    fake.set_token_answer("one-of-them", |t| t.answered_audiences = Some(vec!["x".into(), "istio-ca".into()]));
    let a = authenticator(&fake, TokenReviewConfig::default());
    for token in ["elsewhere", "silent"] {
        match a.authenticate(&creds(token)).await {
            Err(AuthError::Rejected(m)) => {
                assert_eq!(m, Rejection::Audience(vec!["istio-ca".into()]), "{token}");
                assert_eq!(m.to_string(), "the token is not valid for audience istio-ca", "{token}");
            }
            other => panic!("{token}: {other:?}"),
        }
    }
    assert!(a.authenticate(&creds("one-of-them")).await.unwrap().is_some());
}

#[tokio::test]
async fn results_expire_after_the_ttl_and_never_outlive_the_token() {
    let fake = FakeApi::new();
    fake.add_service_account_token("short", "ns", "sa", None, &[]);
    let a = authenticator(&fake, TokenReviewConfig { cache_ttl: Duration::from_millis(200), ..Default::default() });
    a.authenticate(&creds("short")).await.unwrap();
    a.authenticate(&creds("short")).await.unwrap();
    assert_eq!(fake.token_reviews(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.authenticate(&creds("short")).await.unwrap();
    assert_eq!(fake.token_reviews(), 2, "re-reviewed after the TTL");

    // A token expiring in one second is not trusted from cache after that,
    // even with a 60 s TTL.
    let jwt = jwt_expiring_in(1);
    fake.add_service_account_token(&jwt, "ns", "sa", None, &[]);
    let a = authenticator(&fake, TokenReviewConfig::default());
    a.authenticate(&creds(&jwt)).await.unwrap();
    a.authenticate(&creds(&jwt)).await.unwrap();
    assert_eq!(fake.token_reviews(), 3);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    a.authenticate(&creds(&jwt)).await.unwrap();
    assert_eq!(fake.token_reviews(), 4);
}

#[tokio::test]
async fn the_cache_is_bounded() {
    let fake = FakeApi::new();
    for i in 0..10 {
        fake.add_service_account_token(&format!("t{i}"), "ns", &format!("sa{i}"), None, &[]);
    }
    let a = authenticator(&fake, TokenReviewConfig { max_entries: 3, ..Default::default() });
    for i in 0..10 {
        a.authenticate(&creds(&format!("t{i}"))).await.unwrap();
        assert_eq!(a.cached(), (i + 1).min(3), "entries after {} tokens", i + 1);
    }
    // The newest three are answered from the cache; the first was dropped.
    let reviews = fake.token_reviews();
    a.authenticate(&creds("t9")).await.unwrap();
    assert_eq!(fake.token_reviews(), reviews, "t9 is cached");
    a.authenticate(&creds("t0")).await.unwrap();
    assert_eq!(fake.token_reviews(), reviews + 1, "t0 was dropped");
}

#[tokio::test]
async fn a_storm_of_one_token_makes_one_token_review() {
    let fake = FakeApi::new();
    fake.add_service_account_token("storm", "ns", "sa", None, &[]);
    let a = Arc::new(authenticator(&fake, TokenReviewConfig::default()));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move { a.authenticate(&creds("storm")).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().unwrap().is_some());
    }
    assert_eq!(fake.token_reviews(), 1);
}

#[tokio::test]
async fn an_unreachable_api_is_unavailable_and_cached_callers_keep_working() {
    let fake = FakeApi::new();
    fake.add_service_account_token("known", "ns", "sa", None, &[]);
    fake.add_service_account_token("new", "ns", "sa2", None, &[]);
    let a = authenticator(&fake, TokenReviewConfig::default());
    a.authenticate(&creds("known")).await.unwrap();
    fake.set_outage(true);
    assert!(a.authenticate(&creds("known")).await.unwrap().is_some(), "cached caller still served");
    match a.authenticate(&creds("new")).await {
        Err(AuthError::Unavailable(Unavailable::TokenReviewFailed { summary })) => {
            assert!(summary.contains("503") && !summary.contains("new"), "{summary}");
        }
        other => panic!("{other:?}"),
    }
    fake.set_outage(false);
    assert!(a.authenticate(&creds("new")).await.unwrap().is_some());
}

/// A caller is a service account only if the review puts it in the service
/// accounts' group and its user name is exactly
/// `system:serviceaccount:<namespace>:<name>`, both parts present, the name
/// without a colon: a user merely named like one (from another
/// authenticator) and malformed names are refused.
#[tokio::test]
async fn only_well_formed_service_accounts_in_their_group_are_callers() {
    let fake = FakeApi::new();
    let answer = |username: &str, groups: &[&str]| TokenAnswer {
        username: username.into(),
        uid: "u".into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        ..Default::default()
    };
    let sa_groups = ["system:serviceaccounts", "system:serviceaccounts:ns", "system:authenticated"];
    fake.add_token("lookalike", answer("system:serviceaccount:ns:sa", &["system:authenticated", "oidc:users"]));
    fake.add_token("no-namespace", answer("system:serviceaccount::sa", &sa_groups));
    fake.add_token("no-name", answer("system:serviceaccount:ns:", &sa_groups));
    fake.add_token("colon-in-name", answer("system:serviceaccount:ns:sa:extra", &sa_groups));
    fake.add_token("good", answer("system:serviceaccount:ns:sa", &sa_groups));
    let a = authenticator(&fake, TokenReviewConfig::default());
    match a.authenticate(&creds("lookalike")).await {
        Err(AuthError::Rejected(Rejection::NotServiceAccount(user))) => assert_eq!(user, "system:serviceaccount:ns:sa"),
        other => panic!("lookalike: {other:?}"),
    }
    for token in ["no-namespace", "no-name", "colon-in-name"] {
        match a.authenticate(&creds(token)).await {
            Err(AuthError::Rejected(Rejection::NotServiceAccountUsername(_))) => {}
            other => panic!("{token}: {other:?}"),
        }
    }
    let caller = a.authenticate(&creds("good")).await.unwrap().unwrap();
    assert_eq!((caller.namespace.as_str(), caller.service_account.as_str()), ("ns", "sa"));
    // A refusal names this authenticator, as the client and the audit log see it.
    let chain = meshroot::auth::AuthenticatorChain::new(vec![Arc::new(a)]);
    let refused = chain.authenticate(&creds("lookalike")).await.unwrap_err();
    assert!(refused.to_string().starts_with("kubernetes-tokenreview: "), "{refused}");
}
