//! The web UI: static files, compiled into the controller, which serves them beside the REST
//! API. The UI is a page of plain JavaScript that uses only the public REST API (with the
//! session cookie the API hands out at login), so it can do nothing the API would refuse.

/// One file of the UI.
#[derive(Debug)]
pub struct Asset {
    /// Its name under the UI's path, e.g. `app.js`.
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

macro_rules! assets {
    ($($name:literal => $content_type:literal),* $(,)?) => {
        &[$(Asset {
            name: $name,
            content_type: $content_type,
            body: include_bytes!(concat!("../assets/", $name)),
        }),*]
    };
}

/// Every file of the UI.
pub const ASSETS: &[Asset] = assets![
    "index.html" => "text/html; charset=utf-8",
    "app.js" => "text/javascript; charset=utf-8",
    "app.css" => "text/css; charset=utf-8",
    "icon.svg" => "image/svg+xml",
    "api.js" => "text/javascript; charset=utf-8",
    "dom.js" => "text/javascript; charset=utf-8",
    "ui.js" => "text/javascript; charset=utf-8",
    "views/common.js" => "text/javascript; charset=utf-8",
    "views/overview.js" => "text/javascript; charset=utf-8",
    "views/nodes.js" => "text/javascript; charset=utf-8",
    "views/node.js" => "text/javascript; charset=utf-8",
    "views/charts.js" => "text/javascript; charset=utf-8",
    "views/clusters.js" => "text/javascript; charset=utf-8",
    "views/cluster.js" => "text/javascript; charset=utf-8",
    "views/workloads.js" => "text/javascript; charset=utf-8",
    "views/tokens.js" => "text/javascript; charset=utf-8",
    "views/events.js" => "text/javascript; charset=utf-8",
    "views/alerts.js" => "text/javascript; charset=utf-8",
];

/// The UI's file called `name`, if there is one.
pub fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// The page every UI address loads; the script shows the view the address names.
pub fn index() -> &'static Asset {
    asset("index.html").expect("index.html is one of the assets")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_found_by_name_and_the_index_loads_the_script() {
        for a in ASSETS {
            assert_eq!(asset(a.name).map(|f| f.name), Some(a.name));
            assert!(!a.body.is_empty(), "{} is empty", a.name);
        }
        assert_eq!(asset("../Cargo.toml").map(|a| a.name), None);
        let index = std::str::from_utf8(index().body).expect("index.html is UTF-8");
        assert!(index.contains("app.js") && index.contains("app.css"));
    }

    /// Every file in `assets/` is served, and every module a script imports is one of them
    /// (a forgotten entry would only show as a broken page in the browser).
    #[test]
    fn every_file_and_every_import_is_an_asset() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
        let mut files = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    let name = path.strip_prefix(&root).unwrap().to_str().unwrap();
                    files.push(name.replace(std::path::MAIN_SEPARATOR, "/"));
                }
            }
        }
        for name in &files {
            assert!(asset(name).is_some(), "assets/{name} is not in ASSETS");
        }
        for a in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            let text = std::str::from_utf8(a.body).unwrap();
            let dir = a.name.rsplit_once('/').map_or("", |(d, _)| d);
            for line in text.lines().filter(|l| l.starts_with("import ")) {
                let target = line
                    .rsplit_once(" from '")
                    .map(|(_, t)| t.trim_end_matches("';"));
                let Some(target) = target else { continue };
                let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
                for seg in target.split('/') {
                    match seg {
                        "." => {}
                        ".." => {
                            parts.pop();
                        }
                        s => parts.push(s),
                    }
                }
                let resolved = parts.join("/");
                assert!(
                    asset(&resolved).is_some(),
                    "{} imports {target}, which is not an asset",
                    a.name
                );
            }
        }
    }
}
