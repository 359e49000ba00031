//! Test helpers for GoVerse.
//!
//! - [`assert_eventually!`]: polls a condition (which may `.await`) until it holds or a timeout
//!   passes, instead of sleeping a fixed time.

/// Polls `cond` every 5 ms until it is true; panics naming the condition after `timeout`
/// (default 10 s). Use inside an async test.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr) => {
        $crate::assert_eventually!($cond, ::std::time::Duration::from_secs(10))
    };
    ($cond:expr, $timeout:expr) => {{
        let timeout: ::std::time::Duration = $timeout;
        let deadline = ::std::time::Instant::now() + timeout;
        loop {
            if $cond {
                break;
            }
            if ::std::time::Instant::now() > deadline {
                panic!(
                    "condition not met within {:?}: {}",
                    timeout,
                    stringify!($cond)
                );
            }
            $crate::__sleep(::std::time::Duration::from_millis(5)).await;
        }
    }};
}

#[doc(hidden)]
pub async fn __sleep(duration: std::time::Duration) {
    tokio::time::sleep(duration).await;
}
