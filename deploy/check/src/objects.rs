//! Reading rendered Kubernetes objects (as JSON values).

use serde_json::Value;

/// The pod spec of a workload (`Deployment`, `Job`, a `Rollout` with its own template, …).
pub fn pod_spec(obj: &Value) -> Option<&Value> {
    let spec = match obj["kind"].as_str()? {
        "Pod" => &obj["spec"],
        "CronJob" => &obj["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => &obj["spec"]["template"]["spec"],
    };
    spec.is_object().then_some(spec)
}

/// Every container of a workload, init containers included.
pub fn containers(obj: &Value) -> Vec<&Value> {
    let Some(spec) = pod_spec(obj) else {
        return Vec::new();
    };
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| spec[*k].as_array())
        .flatten()
        .collect()
}

/// The objects of one kind.
pub fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// The object of a kind and name.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

/// A generated ConfigMap by the name it was generated under (`gateway-config` is rendered as
/// `gateway-config-<hash>`).
pub fn generated_config_map<'a>(objects: &'a [Value], name: &str) -> Option<&'a Value> {
    objects.iter().find(|o| {
        o["kind"] == "ConfigMap"
            && o["metadata"]["name"]
                .as_str()
                .and_then(|n| n.strip_prefix(name))
                .is_some_and(|rest| rest.starts_with('-') && !rest[1..].contains('-'))
    })
}

/// The port of a `host:port` listener address (`0.0.0.0:50051`) or a URL
/// (`http://auth:50052`).
pub fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit(':').next()?.trim_end_matches('/').parse().ok()
}

/// The host of a URL (`http://auth:50052` → `auth`).
pub fn host_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = authority.rsplit('@').next()?;
    host.split(':').next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn addresses_and_urls() {
        assert_eq!(port_of("0.0.0.0:50051"), Some(50051));
        assert_eq!(port_of("http://auth:50052"), Some(50052));
        assert_eq!(port_of("nowhere"), None);
        assert_eq!(host_of("http://auth:50052"), Some("auth"));
        assert_eq!(
            host_of("redis://:$(P)@keel-valkey-primary:6379/0"),
            Some("keel-valkey-primary")
        );
    }

    #[test]
    fn generated_names_are_matched_exactly() {
        let objects = vec![
            json!({"kind": "ConfigMap", "metadata": {"name": "auth-config-abc123"}}),
            json!({"kind": "ConfigMap", "metadata": {"name": "auth-config-extra-abc123"}}),
        ];
        assert_eq!(
            generated_config_map(&objects, "auth-config").unwrap()["metadata"]["name"],
            "auth-config-abc123"
        );
        assert!(generated_config_map(&objects, "gateway-config").is_none());
    }

    #[test]
    fn containers_include_init_containers() {
        let job = json!({"kind": "Job", "spec": {"template": {"spec": {
            "initContainers": [{"name": "a"}], "containers": [{"name": "b"}]}}}});
        let names: Vec<_> = containers(&job).iter().map(|c| c["name"].clone()).collect();
        assert_eq!(names, vec![json!("a"), json!("b")]);
        assert!(containers(&json!({"kind": "Rollout", "spec": {}})).is_empty());
    }
}
