use kconc_runtime::{subscriber, Context, FromMessage, Message, PayloadError};

/// A user's own extractor: the tenant named in a header.
struct Tenant(String);

impl FromMessage for Tenant {
    fn from_message(msg: &Message, _cx: &Context) -> Result<Self, PayloadError> {
        msg.header("tenant")
            .and_then(|h| h.value.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(|t| Tenant(t.to_owned()))
            .ok_or_else(|| msg.payload_error("no `tenant` header"))
    }
}

#[subscriber(topic = "orders", group = "tenants")]
async fn by_tenant(tenant: Tenant, msg: Message) {
    println!("{} {}", tenant.0, msg.offset());
}

fn main() {}
