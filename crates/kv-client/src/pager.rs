//! Paging through a prefix: one call per page, as a loop or as a stream.

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::decode_ok;
use crate::{ClientError, Entry, KvClient};

/// Pages through a prefix; see [`KvClient::list`].
pub struct ListPages<'a, T> {
    client: &'a KvClient,
    prefix: String,
    page_size: usize,
    after: Option<String>,
    done: bool,
    _value: std::marker::PhantomData<fn() -> T>,
}

impl<'a, T: DeserializeOwned> ListPages<'a, T> {
    pub(crate) fn new(client: &'a KvClient, prefix: &str, page_size: usize) -> Self {
        Self {
            client,
            prefix: prefix.to_owned(),
            page_size,
            after: None,
            done: false,
            _value: std::marker::PhantomData,
        }
    }

    /// The next page of live entries in key order; `None` once every page was read.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Entry<T>>>, ClientError> {
        if self.done {
            return Ok(None);
        }
        let mut query = vec![
            ("prefix", self.prefix.clone()),
            ("limit", self.page_size.to_string()),
        ];
        if let Some(after) = &self.after {
            query.push(("after", after.clone()));
        }
        let qs =
            serde_urlencoded::to_string(&query).map_err(|e| ClientError::Codec(e.to_string()))?;
        let answer = self
            .client
            .call
            .run(Method::GET, &format!("/v1/kv?{qs}"), None, &[], false)
            .await?;
        #[derive(Deserialize)]
        struct Page<T> {
            items: Vec<Entry<T>>,
            next: Option<String>,
        }
        let page: Page<T> = decode_ok(answer)?;
        self.after = page.next;
        self.done = self.after.is_none();
        Ok(Some(page.items))
    }

    /// The remaining pages as a [`Stream`](futures_core::Stream) of `Vec<Entry<T>>`.
    pub fn into_stream(self) -> PageStream<'a, T>
    where
        T: Send + 'a,
    {
        PageStream {
            state: StreamState::Idle(self),
        }
    }

    /// Reads every remaining page.
    pub async fn collect_all(mut self) -> Result<Vec<Entry<T>>, ClientError> {
        let mut all = vec![];
        while let Some(page) = self.next_page().await? {
            all.extend(page);
        }
        Ok(all)
    }
}

type PageResult<T> = Result<Option<Vec<Entry<T>>>, ClientError>;
type PageFuture<'a, T> = std::pin::Pin<
    Box<dyn std::future::Future<Output = (ListPages<'a, T>, PageResult<T>)> + Send + 'a>,
>;

/// A prefix listing as a stream of pages; see [`ListPages::into_stream`].
pub struct PageStream<'a, T> {
    state: StreamState<'a, T>,
}

enum StreamState<'a, T> {
    Idle(ListPages<'a, T>),
    Fetching(PageFuture<'a, T>),
    Done,
}

impl<'a, T: DeserializeOwned + Send + 'a> futures_core::Stream for PageStream<'a, T> {
    type Item = Result<Vec<Entry<T>>, ClientError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        loop {
            match std::mem::replace(&mut self.state, StreamState::Done) {
                StreamState::Idle(mut pages) => {
                    self.state = StreamState::Fetching(Box::pin(async move {
                        let page = pages.next_page().await;
                        (pages, page)
                    }));
                }
                StreamState::Fetching(mut fetch) => {
                    return match fetch.as_mut().poll(cx) {
                        Poll::Pending => {
                            self.state = StreamState::Fetching(fetch);
                            Poll::Pending
                        }
                        Poll::Ready((pages, Ok(Some(items)))) => {
                            self.state = StreamState::Idle(pages);
                            Poll::Ready(Some(Ok(items)))
                        }
                        Poll::Ready((_, Ok(None))) => Poll::Ready(None),
                        Poll::Ready((_, Err(e))) => Poll::Ready(Some(Err(e))),
                    };
                }
                StreamState::Done => return Poll::Ready(None),
            }
        }
    }
}
