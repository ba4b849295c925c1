//! A real headless Chromium (Debian's `chromium`), driven through `chromedriver` with the
//! WebDriver protocol, behind a blocking API for the tests.

use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a page has to show what a test waits for (the UI's live updates included).
pub const SHOWS: Duration = Duration::from_secs(15);
/// How long a fresh browser has for its first page: it parses and compiles the app's scripts
/// first, which took over 15 s on two cores busy with other lab tests.
pub const FIRST_PAGE: Duration = Duration::from_secs(60);

/// One browser window. Dropping it ends the browser and its driver.
pub struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    _profile: tempfile::TempDir,
    /// Where screenshots go.
    pub shots: PathBuf,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile, `width`×`height`.
    pub fn start(width: u32, height: u32) -> Self {
        for program in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(program).exists(),
                "the UI tests need {program}: apt-get install chromium chromium-driver"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut driver = Command::new(CHROMEDRIVER);
        driver
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so the browser's processes end with it (see Drop).
            .process_group(0);
        let driver = driver.spawn().expect("start chromedriver");
        let profile = tempfile::tempdir().expect("profile dir");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--window-size={width},{height}"),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match runtime.block_on(
                ClientBuilder::new(connector)
                    .capabilities(capabilities.clone())
                    .connect(&url),
            ) {
                Ok(client) => break client,
                Err(e) if started.elapsed() < START_TIMEOUT => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("no WebDriver session from chromedriver on {url}: {e}"),
            }
        };
        let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
        std::fs::create_dir_all(&shots).expect("screenshot dir");
        Self {
            runtime,
            client: Some(client),
            driver,
            _profile: profile,
            shots,
        }
    }

    fn client(&self) -> &Client {
        self.client
            .as_ref()
            .expect("the session is open until drop")
    }

    pub fn goto(&self, url: &str) {
        self.runtime
            .block_on(self.client().goto(url))
            .unwrap_or_else(|e| panic!("go to {url}: {e}"));
    }

    /// Runs `script` in the page (its `arguments` are `args`); what it returns.
    pub fn script(&self, script: &str, args: Vec<Value>) -> Value {
        self.runtime
            .block_on(self.client().execute(script, args))
            .unwrap_or_else(|e| panic!("script {script}: {e}"))
    }

    /// Runs `script`, which calls its last argument with the result when done.
    pub fn script_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.runtime
            .block_on(self.client().execute_async(script, args))
            .unwrap_or_else(|e| panic!("script {script}: {e}"))
    }

    /// The elements `css` finds now.
    pub fn all(&self, css: &str) -> Vec<Element> {
        self.runtime
            .block_on(self.client().find_all(Locator::Css(css)))
            .unwrap_or_default()
    }

    /// Waits until `find` returns something, and returns it; panics naming `what` and the
    /// page's text otherwise.
    pub fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut find: impl FnMut(&Self) -> Option<T>,
    ) -> T {
        let started = Instant::now();
        loop {
            if let Some(found) = find(self) {
                return found;
            }
            if started.elapsed() > timeout {
                panic!(
                    "the page did not show {what} within {timeout:?}; it shows:\n{}",
                    self.text("body")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for an element `css` finds.
    pub fn element(&self, css: &str) -> Element {
        self.wait(css, SHOWS, |b| b.all(css).into_iter().next())
    }

    /// The visible text of the first element `css` finds ("" if none).
    pub fn text(&self, css: &str) -> String {
        match self.all(css).into_iter().next() {
            Some(e) => self.runtime.block_on(e.text()).unwrap_or_default(),
            None => String::new(),
        }
    }

    /// The value of an attribute of the first element `css` finds. Found and read in one step
    /// in the page: a live update may replace the element between two WebDriver calls.
    pub fn attribute(&self, css: &str, name: &str) -> Option<String> {
        self.script(
            "const e = document.querySelector(arguments[0]); \
             return e === null ? null : e.getAttribute(arguments[1]);",
            vec![css.into(), name.into()],
        )
        .as_str()
        .map(str::to_owned)
    }

    /// The visible texts of the buttons inside `scope` (a CSS selector).
    pub fn buttons(&self, scope: &str) -> Vec<String> {
        self.all(&format!("{scope} button"))
            .into_iter()
            .filter(|b| self.runtime.block_on(b.is_displayed()).unwrap_or(false))
            .filter_map(|b| self.runtime.block_on(b.text()).ok())
            .map(|t| t.trim().to_owned())
            .collect()
    }

    /// Clicks the button inside `scope` whose text is `label`, once there is one enabled. A live
    /// update may redraw the button between finding and clicking it; then it is found again.
    pub fn click_button(&self, scope: &str, label: &str) {
        let what = format!("a button {label:?} in {scope} that takes a click");
        self.wait(&what, SHOWS, |b| {
            let button = b.all(&format!("{scope} button")).into_iter().find(|e| {
                b.runtime
                    .block_on(e.text())
                    .is_ok_and(|t| t.trim() == label)
                    && b.runtime.block_on(e.is_enabled()).unwrap_or(false)
                    && b.runtime.block_on(e.is_displayed()).unwrap_or(false)
            })?;
            b.runtime.block_on(button.click()).ok()
        });
    }

    /// Replaces the value of the input `css` finds with `text`, as typed.
    pub fn fill(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.runtime.block_on(e.clear()).expect("clear the input");
        self.runtime
            .block_on(e.send_keys(text))
            .unwrap_or_else(|err| panic!("type into {css}: {err}"));
    }

    /// Saves a screenshot of the window as `<name>.png` in [`Browser::shots`].
    pub fn shot(&self, name: &str) -> PathBuf {
        let png = self
            .runtime
            .block_on(self.client().screenshot())
            .expect("a screenshot");
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }

    pub fn resize(&self, width: u32, height: u32) {
        self.runtime
            .block_on(self.client().set_window_size(width, height))
            .expect("resize the window");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), client.close()).await
            });
        }
        // The driver and whatever browser processes are left, as one group.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
    }
}
