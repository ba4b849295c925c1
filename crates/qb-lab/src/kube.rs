//! Reading what a lab cluster's API server answers.

use serde_json::Value;

/// The names of the Nodes in a `NodeList` (`kubectl get nodes -o json`, `GET /api/v1/nodes`)
/// whose `Ready` condition is true, sorted.
pub fn ready_nodes(list: &Value) -> Vec<String> {
    let mut ready: Vec<String> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| {
            n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    ready.sort();
    ready
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn only_nodes_whose_ready_condition_is_true_count() {
        let node = |name: &str, ready: &str| {
            json!({"metadata": {"name": name}, "status": {"conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": ready},
            ]}})
        };
        let list = json!({"items": [
            node("b", "True"), node("c", "False"), node("a", "True"), node("d", "Unknown"),
            {"metadata": {"name": "e"}},
        ]});
        assert_eq!(super::ready_nodes(&list), ["a", "b"]);
        assert!(super::ready_nodes(&json!({"kind": "Status"})).is_empty());
    }
}
