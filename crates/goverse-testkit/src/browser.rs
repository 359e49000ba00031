//! A headless Chromium driven through ChromeDriver, for tests of the web pages.

use std::time::Duration;

use crate::Process;

/// A browser session on chromedriver, with the flags this machine needs (headless, no
/// sandbox, no GPU, no background networking, a fresh profile). `CHROMIUM` and
/// `CHROMEDRIVER` name other binaries than /usr/bin/chromium and /usr/bin/chromedriver.
#[derive(Debug)]
pub struct Browser {
    /// The WebDriver session.
    pub client: fantoccini::Client,
    _driver: Process,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts ChromeDriver on a free port and opens a session.
    pub async fn start() -> Self {
        let driver_path = std::env::var("CHROMEDRIVER").unwrap_or("/usr/bin/chromedriver".into());
        let chromium = std::env::var("CHROMIUM").unwrap_or("/usr/bin/chromium".into());
        assert!(
            std::path::Path::new(&driver_path).exists() && std::path::Path::new(&chromium).exists(),
            "this test needs Chromium and ChromeDriver ({chromium}, {driver_path}): \
             ./scripts/test installs them (apt-get install chromium chromium-driver)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut driver = Process::start(&driver_path, [format!("--port={port}")]);
        driver.expect("started successfully");
        let profile = tempfile::tempdir().unwrap();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({
                "binary": chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let client = fantoccini::ClientBuilder::new(
            hyper_util::client::legacy::connect::HttpConnector::new(),
        )
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session");
        Self {
            client,
            _driver: driver,
            _profile: profile,
        }
    }

    /// The text of `selector`'s element (empty when it does not exist).
    pub async fn text(&self, selector: &str) -> String {
        let script =
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';";
        let value = self
            .client
            .execute(script, vec![serde_json::json!(selector)])
            .await
            .unwrap();
        value.as_str().unwrap_or_default().to_owned()
    }

    /// Clicks the element `selector` names.
    pub async fn click(&self, selector: &str) {
        let element = self.client.find(fantoccini::Locator::Css(selector)).await;
        let element = element.unwrap_or_else(|e| panic!("no element {selector}: {e}"));
        element.click().await.unwrap();
    }

    /// Types `text` into the element `selector` names.
    pub async fn type_into(&self, selector: &str, text: &str) {
        let element = self.client.find(fantoccini::Locator::Css(selector)).await;
        let element = element.unwrap_or_else(|e| panic!("no element {selector}: {e}"));
        element.send_keys(text).await.unwrap();
    }

    /// Waits until `selector`'s text contains `want`.
    pub async fn wait_text(&self, selector: &str, want: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.text(selector).await;
            if text.contains(want) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{selector} never showed {want:?}; it shows {text:?} (the page: {:?})",
                self.text("body")
                    .await
                    .chars()
                    .take(2000)
                    .collect::<String>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
