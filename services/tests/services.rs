//! What a service under test is given: the database through the latency proxy, and the Redis
//! its caller chooses.

use std::collections::BTreeMap;

use kata_services::{Options, ServiceRedis, Services};

#[tokio::test]
async fn a_service_reaches_postgres_through_the_proxy_and_redis_as_its_caller_chooses() {
    let services = Services::start(Options { honour_env: false, ..Options::default() }).await.unwrap();
    let env = |redis| services.service_env("s3cret", redis).into_iter().collect::<BTreeMap<_, _>>();

    let checker = env(ServiceRedis::Proxied);
    assert_eq!(checker.keys().collect::<Vec<_>>(), ["DATABASE_URL", "JWT_SECRET", "REDIS_URL"]);
    assert_eq!(checker["DATABASE_URL"], services.service_database_url);
    assert_ne!(checker["DATABASE_URL"], services.database_url, "not straight to Postgres");
    assert_eq!(checker["JWT_SECRET"], "s3cret");
    assert_eq!(checker["REDIS_URL"], services.service_redis_url);
    assert_ne!(checker["REDIS_URL"], services.redis_url, "the checker's service reaches Redis through its proxy");

    let load_test = env(ServiceRedis::Direct);
    assert_eq!(load_test["DATABASE_URL"], services.service_database_url);
    assert_eq!(load_test["REDIS_URL"], services.redis_url);
}
