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
}
