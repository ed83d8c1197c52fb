//! The macro that turns a table of calls into their `Call` impls, the
//! direction's wire enum and its serving trait (see the parent module).

macro_rules! call_table {
    (
        $(#[$enum_meta:meta])*
        enum $Enum:ident, kinds $Kind:ident, serve $Serve:ident;
        $(
            $(#[$meta:meta])*
            $Name:ident $snake:ident
                [mutates: $mutates:literal, pushes: $pushes:literal, session: $sid:tt]
                { $( $(#[$fmeta:meta])* $field:ident : $fty:ty ),* $(,)? }
                -> $Reply:ty as $codec:ident;
        )*
    ) => {
        $(
            $(#[$meta])*
            #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
            pub struct $Name {
                $( $(#[$fmeta])* pub $field: $fty, )*
            }

            impl From<$Name> for $Enum {
                fn from(call: $Name) -> Self {
                    $Enum::$Name(call)
                }
            }

            impl Call for $Name {
                type Wire = $Enum;
                type Reply = $Reply;
                const NAME: &'static str = stringify!($snake);
                const INDEX: usize = $Kind::$Name as usize;
                fn encode_reply(reply: &$Reply) -> Result<Bytes, CodecError> {
                    reply::$codec::encode(reply)
                }
                fn decode_reply(bytes: Bytes) -> Result<$Reply, CodecError> {
                    reply::$codec::decode(bytes)
                }
            }
        )*

        $(#[$enum_meta])*
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        pub enum $Enum {
            $(
                #[doc = concat!("A [`", stringify!($Name), "`] call.")]
                $Name($Name),
            )*
        }

        #[doc = concat!("The kind of a [`", stringify!($Enum), "`], a bounded metric label.")]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $Kind {
            $(
                #[doc = concat!("[`", stringify!($Name), "`].")]
                $Name,
            )*
        }

        impl $Kind {
            /// Every kind, in index order.
            pub const ALL: &'static [$Kind] = &[$($Kind::$Name),*];

            /// The kind's name (`"bind"`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($Kind::$Name => stringify!($snake),)*
                }
            }

            /// Whether a call of this kind changes session state (and so
            /// must be durable before it is acknowledged, when a store is
            /// attached).
            pub fn mutates(self) -> bool {
                match self {
                    $($Kind::$Name => $mutates,)*
                }
            }

            /// Whether a call of this kind pushes to clients (and is answered
            /// once the pushes are written).
            pub fn pushes_to_clients(self) -> bool {
                match self {
                    $($Kind::$Name => $pushes,)*
                }
            }
        }

        impl $Enum {
            /// The call's kind.
            pub fn kind(&self) -> $Kind {
                match self {
                    $($Enum::$Name(_) => $Kind::$Name,)*
                }
            }

            /// The one session the call addresses, for calls that address one.
            pub fn sid(&self) -> Option<SessionId> {
                match self {
                    $($Enum::$Name(call) => call_table!(@sid call $sid),)*
                }
            }

            /// Runs the call on `server` and encodes its reply.
            pub async fn serve<S: $Serve + ?Sized>(
                self,
                server: &S,
                cx: &S::Cx,
            ) -> Result<Bytes, RpcError> {
                match self {
                    $(
                        $Enum::$Name(call) => {
                            let reply = server.$snake(call, cx).await?;
                            <$Name as Call>::encode_reply(&reply).map_err(|err| {
                                RpcError::new(
                                    crate::ErrorCode::Internal,
                                    format!("cannot encode the reply: {err}"),
                                )
                            })
                        }
                    )*
                }
            }
        }

        #[doc = concat!(
            "The side that serves [`", stringify!($Enum), "`]s: one method per call. ",
            "`Cx` is what the server passes along with each call."
        )]
        pub trait $Serve: Sync {
            /// What comes with each call besides its arguments.
            type Cx: Sync;
            $(
                #[doc = concat!("Runs a [`", stringify!($Name), "`].")]
                fn $snake(
                    &self,
                    call: $Name,
                    cx: &Self::Cx,
                ) -> impl Future<Output = Result<$Reply, RpcError>> + Send;
            )*
        }
    };
    (@sid $call:ident none) => {{
        let _ = $call;
        None
    }};
    (@sid $call:ident $field:ident) => {
        Some($call.$field)
    };
}
