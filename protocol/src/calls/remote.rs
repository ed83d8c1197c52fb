//! What calls between servers carry besides the calls themselves: where a
//! relayed call goes, what a remote method answered, and the adopt call of
//! sticky bindings.

use super::{reply, Remote, SessionSnapshot};
use crate::CodecError;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Which node of a server type a relayed remote call goes to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// The node that owns this key: a rendezvous hash over the type's
    /// nodes, the same node for the same key while the nodes stay (as a
    /// client request routed by the same key).
    Key(String),
    /// The node with this id.
    Node(String),
    /// The player's node: for a server type whose players stay on their
    /// node (a sticky type), the node their binding names; for the others,
    /// the node that owns the uid as a key (as a client request of that
    /// player is routed).
    Uid(String),
}

/// The remote method, under a sticky server type (`"<type>.sticky.adopt"`),
/// that the node a player's binding moved to is called with before the
/// player's next request reaches it: its game loads the player's state.
/// Optional: when the node serves no such method, the request goes on.
pub const ADOPT_METHOD: &str = "sticky.adopt";

/// The arguments of [`ADOPT_METHOD`]: whose binding moved, and from which
/// node (drained, or away for too long).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adopt {
    /// The player.
    pub uid: String,
    /// The node that held the player before.
    pub from: String,
}

/// What a remote method answered: its MessagePack answer, or the error it
/// returned (its code and message).
pub type RemoteReply = Result<Bytes, CalleeError>;

impl Remote {
    /// A call of `route` by node `caller`, about `session` if given, with
    /// `args` as MessagePack.
    pub fn new<A: Serialize + ?Sized>(
        route: &str,
        caller: &str,
        session: Option<SessionSnapshot>,
        args: &A,
    ) -> Result<Remote, CodecError> {
        Ok(Remote {
            route: route.to_string(),
            caller: caller.to_string(),
            session,
            args: Bytes::from(rmp_serde::to_vec_named(args).map_err(CodecError::Encode)?),
        })
    }

    /// The answer in a callee's reply bytes: the typed answer, or the
    /// error the method returned.
    pub fn answer<R: serde::de::DeserializeOwned>(
        reply: Bytes,
    ) -> Result<Result<R, CalleeError>, CodecError> {
        let outcome: RemoteReply = reply::msgpack::decode(reply)?;
        match outcome {
            Ok(answer) => reply::msgpack::decode(answer).map(Ok),
            Err(callee) => Ok(Err(callee)),
        }
    }
}

/// The error a remote method returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct CalleeError {
    /// The method's code.
    pub code: u32,
    /// Its message.
    pub message: String,
}
