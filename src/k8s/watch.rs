//! Helpers shared by the watch-driven loops (registry builder, controllers).

use futures::stream::BoxStream;
use futures::{FutureExt, Stream, StreamExt};
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{Store, store::Writer};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

/// A reflector over `api` that fills `writer`'s store and yields `()` per
/// change; watch errors are logged and retried with backoff.
pub fn changes<K>(writer: Writer<K>, api: Api<K>, config: watcher::Config) -> BoxStream<'static, ()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    reflector(writer, watcher(api, config))
        .default_backoff()
        .map(|event| {
            if let Err(e) = event {
                tracing::warn!(error = %e, kind = %std::any::type_name::<K>(), "watch error; retrying");
            }
        })
        .boxed()
}

/// Lets a burst of events settle: waits `debounce`, then drains what queued.
pub async fn settle<S: Stream<Item = ()> + Unpin>(changes: &mut S, debounce: Duration) {
    tokio::time::sleep(debounce).await;
    while let Some(Some(())) = changes.next().now_or_never() {}
}

/// Whether a store has completed its initial list. Only for polling from
/// one task: kube-runtime 5's `wait_until_ready` keeps a single waker, so
/// concurrent waiters (or a poll from here) can leave another waiter asleep.
pub fn synced<K>(store: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    store.wait_until_ready().now_or_never().is_some_and(|r| r.is_ok())
}
