//! The Nexmark benchmark's events: people registering, auctions opening, bids on them — the model
//! of Beam's and Flink's `NexmarkGenerator` (`GeneratorConfig` defaults), written for Freshet.
//!
//! **One event sequence, three streams.** Event number `n` is a person when `n % 50 == 0`, an
//! auction when `n % 50` is 1–3 and a bid otherwise (proportions 1 : 3 : 46). Everything about event
//! `n` is a function of the seed and `n` alone (its own random stream), so a source reading only
//! `stream = 'bid'` sees exactly the bids of the sequence the other two streams come from, and
//! `freshet generate nexmark` writes the same events as the sources produce.
//!
//! - Ids follow from the event number: the `k`-th person has id `1000 + k`, the `k`-th auction id
//!   `1000 + k`; sellers and bidders are people already registered (or up to 10 ahead), among the
//!   newest 1000 ("active") people; bids go to one of the newest 100 auctions (or up to 10 ahead).
//! - Hot keys: ½ of bids go to the current hot auction (the first of each block of 100 auctions), ¾
//!   of bids come from the current hot bidder and ¾ of auctions from the current hot seller.
//! - Prices are `round(10^(6u) · 100)` (one dollar to a million, log-uniform); the reserve is the
//!   initial bid plus another price; auctions expire on average after the time of the next 100
//!   auctions (up to twice that).
//! - Half of the bids come from four hot channels (Google, Facebook, Baidu, Apple), the others from
//!   10 000 channels `channel-<k>`, each with its own URL, 9 in 10 of them with `&channel_id=…`.
//! - `extra` pads each event to the benchmark's average sizes: 200 bytes per person, 500 per auction,
//!   100 per bid (a slice of one random megabyte, as Flink's generator does).
//! - Event time is `2026-01-01T00:00:00Z + n / rate` seconds (`rate` events per second of event
//!   time, 10 000 by default; nothing waits on the wall clock), pulled back by up to
//!   `out_of_order_ms` when set. An auction's `expires` is after its own (possibly pulled back) time.
//!
//! Where Flink differs: its bidder ids carry `FIRST_PERSON_ID` twice (a slip Beam does not have;
//! this follows Beam), its random streams are not seeded (this one is), and its disorder reorders
//! event ids in groups instead of pulling event times back.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Builder, StringBuilder, TimestampMillisecondBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;

use super::generator::{EPOCH_2026_MS, Rng};
use crate::error::{Error, Result};
use crate::sql::parser::SourceDef;
use crate::time;

const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;
const TOTAL_PROPORTION: u64 = 50;
pub const FIRST_PERSON_ID: i64 = 1000;
pub const FIRST_AUCTION_ID: i64 = 1000;
pub const FIRST_CATEGORY_ID: i64 = 10;
const NUM_CATEGORIES: u64 = 5;
/// Ids of people and auctions not yet created that may be chosen.
const PERSON_ID_LEAD: u64 = 10;
const AUCTION_ID_LEAD: u64 = 10;
/// Hot sellers, auctions and bidders are the first of each block of this many.
const HOT_BLOCK: u64 = 100;
/// 1 − 1/ratio of auctions have the hot seller, of bids the hot auction and the hot bidder.
const HOT_SELLERS_RATIO: u64 = 4;
const HOT_AUCTION_RATIO: u64 = 2;
const HOT_BIDDERS_RATIO: u64 = 4;
const NUM_ACTIVE_PEOPLE: u64 = 1000;
const NUM_IN_FLIGHT_AUCTIONS: u64 = 100;
const AVG_PERSON_BYTES: usize = 200;
const AVG_AUCTION_BYTES: usize = 500;
const AVG_BID_BYTES: usize = 100;
const HOT_CHANNELS_RATIO: u64 = 2;
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
const CHANNELS: usize = 10_000;
const EXTRA_POOL_BYTES: usize = 1 << 20;
/// Rows of the side input table (Flink's `side_input.txt` for q13).
pub const SIDE_INPUT_ROWS: u64 = 10_000;
/// Events per second of event time, as Beam's `firstEventRate`.
pub const DEFAULT_RATE: f64 = 10_000.0;

const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];

/// Salts that keep the random streams of one event apart.
const SALT_EVENT: u64 = 0x6E65_786D_6172_6B01;
const SALT_JITTER: u64 = 0x6E65_786D_6172_6B02;
const SALT_TABLES: u64 = 0x6E65_786D_6172_6B03;

/// Which of the three streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Person,
    Auction,
    Bid,
}

impl Stream {
    pub const ALL: [Stream; 3] = [Stream::Person, Stream::Auction, Stream::Bid];

    pub fn name(self) -> &'static str {
        match self {
            Stream::Person => "person",
            Stream::Auction => "auction",
            Stream::Bid => "bid",
        }
    }

    pub fn parse(s: &str) -> Option<Stream> {
        Stream::ALL.into_iter().find(|k| k.name() == s)
    }

    /// The stream event number `n` belongs to.
    pub fn of(n: u64) -> Stream {
        let rem = n % TOTAL_PROPORTION;
        if rem < PERSON_PROPORTION {
            Stream::Person
        } else if rem < PERSON_PROPORTION + AUCTION_PROPORTION {
            Stream::Auction
        } else {
            Stream::Bid
        }
    }

    pub fn schema(self) -> SchemaRef {
        let ts = || DataType::Timestamp(TimeUnit::Millisecond, None);
        let s = |name: &str| Field::new(name, DataType::Utf8, true);
        let i = |name: &str| Field::new(name, DataType::Int64, false);
        let fields = match self {
            Stream::Person => vec![
                i("id"),
                s("name"),
                s("email_address"),
                s("credit_card"),
                s("city"),
                s("state"),
                Field::new("date_time", ts(), false),
                s("extra"),
            ],
            Stream::Auction => vec![
                i("id"),
                s("item_name"),
                s("description"),
                i("initial_bid"),
                i("reserve"),
                Field::new("date_time", ts(), false),
                Field::new("expires", ts(), false),
                i("seller"),
                i("category"),
                s("extra"),
            ],
            Stream::Bid => vec![
                i("auction"),
                i("bidder"),
                i("price"),
                s("channel"),
                s("url"),
                Field::new("date_time", ts(), false),
                s("extra"),
            ],
        };
        Arc::new(Schema::new(fields))
    }
}

/// Options of `freshet generate nexmark` and of `connector = 'generator', kind = 'nexmark'`.
#[derive(Debug, Clone, PartialEq)]
pub struct NexmarkOptions {
    pub seed: u64,
    /// Events of all three streams together; `None` is unbounded.
    pub events: Option<u64>,
    /// Events per second of event time.
    pub rate: f64,
    /// Largest amount an event's time is pulled back by.
    pub out_of_order_ms: u64,
}

impl Default for NexmarkOptions {
    fn default() -> Self {
        NexmarkOptions {
            seed: 42,
            events: None,
            rate: DEFAULT_RATE,
            out_of_order_ms: 0,
        }
    }
}

pub const SOURCE_KEYS: &[&str] = &[
    "connector",
    "kind",
    "stream",
    "seed",
    "events",
    "rate",
    "out_of_order_ms",
];

/// The options of a `connector = 'generator', kind = 'nexmark'` source, checked against its columns.
pub fn source_options(def: &SourceDef) -> Result<(NexmarkOptions, Stream)> {
    let o = &def.options;
    o.check_keys("connector 'generator' kind 'nexmark'", SOURCE_KEYS)?;
    let name = o.required("stream", "connector 'generator' kind 'nexmark'")?;
    let stream = Stream::parse(name).ok_or_else(|| {
        Error::option(
            "stream",
            format!("unknown nexmark stream '{name}'; valid: person, auction, bid"),
        )
    })?;
    let schema = stream.schema();
    for f in def.schema.fields() {
        if schema.field_with_name(f.name()).is_err() {
            let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(Error::plan(format!(
                "column '{}' is not produced by nexmark stream '{}'; it produces: {}",
                f.name(),
                stream.name(),
                have.join(", ")
            )));
        }
    }
    let d = NexmarkOptions::default();
    let rate = o.parse_or("rate", d.rate)?;
    if !(rate.is_finite() && rate > 0.0) {
        return Err(Error::option("rate", "must be > 0 (events per second of event time)"));
    }
    Ok((
        NexmarkOptions {
            seed: o.parse_or("seed", d.seed)?,
            events: o.parse_opt("events")?,
            rate,
            out_of_order_ms: o.parse_or("out_of_order_ms", d.out_of_order_ms)?,
        },
        stream,
    ))
}

#[derive(Debug, Clone, PartialEq)]
pub struct Person<'a> {
    pub id: i64,
    pub name: String,
    pub email_address: String,
    pub credit_card: String,
    pub city: &'static str,
    pub state: &'static str,
    pub date_time: i64,
    pub extra: &'a str,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Auction<'a> {
    pub id: i64,
    pub item_name: String,
    pub description: String,
    pub initial_bid: i64,
    pub reserve: i64,
    pub date_time: i64,
    pub expires: i64,
    pub seller: i64,
    pub category: i64,
    pub extra: &'a str,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bid<'a> {
    pub auction: i64,
    pub bidder: i64,
    pub price: i64,
    pub channel: &'a str,
    pub url: &'a str,
    pub date_time: i64,
    pub extra: &'a str,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event<'a> {
    Person(Person<'a>),
    Auction(Auction<'a>),
    Bid(Bid<'a>),
}

/// `"key":"value"` for text that needs no escaping (the generator's strings are letters, digits,
/// spaces and URL punctuation).
fn field_str(out: &mut String, key: &str, value: &str) {
    out.push('"');
    out.push_str(key);
    out.push_str("\":\"");
    out.push_str(value);
    out.push('"');
}

fn field_int(out: &mut String, key: &str, value: i64) {
    use std::fmt::Write;
    let _ = write!(out, "\"{key}\":{value}");
}

fn field_time(out: &mut String, key: &str, ms: i64) {
    out.push('"');
    out.push_str(key);
    out.push_str("\":\"");
    time::write_ms(out, ms);
    out.push('"');
}

impl Event<'_> {
    pub fn stream(&self) -> Stream {
        match self {
            Event::Person(_) => Stream::Person,
            Event::Auction(_) => Stream::Auction,
            Event::Bid(_) => Stream::Bid,
        }
    }

    /// The event as one JSON line (with its newline), its fields named as the stream's columns.
    pub fn write_json(&self, out: &mut String) {
        out.push('{');
        match self {
            Event::Person(p) => {
                field_int(out, "id", p.id);
                out.push(',');
                field_str(out, "name", &p.name);
                out.push(',');
                field_str(out, "email_address", &p.email_address);
                out.push(',');
                field_str(out, "credit_card", &p.credit_card);
                out.push(',');
                field_str(out, "city", p.city);
                out.push(',');
                field_str(out, "state", p.state);
                out.push(',');
                field_time(out, "date_time", p.date_time);
                out.push(',');
                field_str(out, "extra", p.extra);
            }
            Event::Auction(a) => {
                field_int(out, "id", a.id);
                out.push(',');
                field_str(out, "item_name", &a.item_name);
                out.push(',');
                field_str(out, "description", &a.description);
                out.push(',');
                field_int(out, "initial_bid", a.initial_bid);
                out.push(',');
                field_int(out, "reserve", a.reserve);
                out.push(',');
                field_time(out, "date_time", a.date_time);
                out.push(',');
                field_time(out, "expires", a.expires);
                out.push(',');
                field_int(out, "seller", a.seller);
                out.push(',');
                field_int(out, "category", a.category);
                out.push(',');
                field_str(out, "extra", a.extra);
            }
            Event::Bid(b) => {
                field_int(out, "auction", b.auction);
                out.push(',');
                field_int(out, "bidder", b.bidder);
                out.push(',');
                field_int(out, "price", b.price);
                out.push(',');
                field_str(out, "channel", b.channel);
                out.push(',');
                field_str(out, "url", b.url);
                out.push(',');
                field_time(out, "date_time", b.date_time);
                out.push(',');
                field_str(out, "extra", b.extra);
            }
        }
        out.push_str("}\n");
    }

    /// A Kafka record key: the person's or auction's id, a bid's auction.
    pub fn key(&self) -> i64 {
        match self {
            Event::Person(p) => p.id,
            Event::Auction(a) => a.id,
            Event::Bid(b) => b.auction,
        }
    }
}

/// The side input of q13 as CSV with a header: `key,value` for keys 0–9999, the value the key's
/// decimal text (as Flink's `SideInputGenerator` writes it).
pub fn side_input_csv() -> String {
    let mut s = String::from("key,value\n");
    for k in 0..SIDE_INPUT_ROWS {
        s.push_str(&format!("{k},{k}\n"));
    }
    s
}

/// `10^x` from additions, multiplications and divisions only, so the same on every platform (libm's
/// `pow` may differ in the last bit, and prices are rounded from it).
fn pow10(x: f64) -> f64 {
    let k = x.floor();
    let f = x - k;
    // e^(f ln 10) with f ln 10 in [0, 2.31): a Taylor series on an eighth of it, cubed-squared back.
    let y = f * std::f64::consts::LN_10 / 8.0;
    let mut term = 1.0;
    let mut sum = 1.0;
    for i in 1..=16 {
        term *= y / i as f64;
        sum += term;
    }
    let mut r = sum * sum;
    r *= r;
    r *= r;
    for _ in 0..(k as i64) {
        r *= 10.0;
    }
    r
}

/// The generator: a pure function from event number to event, plus the tables it draws from.
#[derive(Debug, Clone)]
pub struct Nexmark {
    opts: NexmarkOptions,
    key: u64,
    delay_us: f64,
    base_ms: i64,
    pool: String,
    hot_urls: [String; 4],
    channels: Vec<(String, String)>,
}

impl Nexmark {
    pub fn new(opts: NexmarkOptions) -> Nexmark {
        let key = Rng::new(opts.seed).next_u64();
        let mut rng = Rng::new(key ^ SALT_TABLES);
        let mut pool = String::with_capacity(EXTRA_POOL_BYTES);
        while pool.len() < EXTRA_POOL_BYTES {
            pool.push((b'a' + rng.below(26) as u8) as char);
        }
        let hot_urls = std::array::from_fn(|_| base_url(&mut rng));
        let channels = (0..CHANNELS)
            .map(|i| {
                let mut url = base_url(&mut rng);
                if rng.below(10) > 0 {
                    url.push_str(&format!("&channel_id={}", (i as i32).reverse_bits().unsigned_abs()));
                }
                (format!("channel-{i}"), url)
            })
            .collect();
        let rate = if opts.rate.is_finite() && opts.rate > 0.0 {
            opts.rate
        } else {
            DEFAULT_RATE
        };
        Nexmark {
            delay_us: 1_000_000.0 / rate,
            base_ms: EPOCH_2026_MS,
            key,
            pool,
            hot_urls,
            channels,
            opts,
        }
    }

    pub fn options(&self) -> &NexmarkOptions {
        &self.opts
    }

    /// Whether event number `n` is past the end.
    pub fn ended(&self, n: u64) -> bool {
        self.opts.events.is_some_and(|e| n >= e)
    }

    /// The in-order event time of event number `n`.
    pub fn nominal_ms(&self, n: u64) -> i64 {
        self.base_ms + (n as f64 * self.delay_us) as i64 / 1000
    }

    fn rng(&self, n: u64, salt: u64) -> Rng {
        let mut h = Rng::new(self.key ^ salt ^ n.wrapping_mul(0xD1B5_4A32_D192_ED03));
        Rng::new(h.next_u64())
    }

    /// The event time of event number `n`: nominal, pulled back by up to `out_of_order_ms`.
    pub fn time_ms(&self, n: u64) -> i64 {
        let t = self.nominal_ms(n);
        match self.opts.out_of_order_ms {
            0 => t,
            d => t - self.rng(n, SALT_JITTER).below(d + 1) as i64,
        }
    }

    pub fn event(&self, n: u64) -> Event<'_> {
        let mut rng = self.rng(n, SALT_EVENT);
        let t = self.time_ms(n);
        match Stream::of(n) {
            Stream::Person => Event::Person(self.person(n, &mut rng, t)),
            Stream::Auction => Event::Auction(self.auction(n, &mut rng, t)),
            Stream::Bid => Event::Bid(self.bid(n, &mut rng, t)),
        }
    }

    fn person(&self, n: u64, rng: &mut Rng, t: i64) -> Person<'_> {
        let id = last_person(n) as i64 + FIRST_PERSON_ID;
        let name = format!(
            "{} {}",
            FIRST_NAMES[rng.below(FIRST_NAMES.len() as u64) as usize],
            LAST_NAMES[rng.below(LAST_NAMES.len() as u64) as usize]
        );
        let mut email_address = next_string(rng, 7, ' ');
        email_address.push('@');
        email_address.push_str(&next_string(rng, 5, ' '));
        email_address.push_str(".com");
        let mut credit_card = String::with_capacity(19);
        for i in 0..4 {
            if i > 0 {
                credit_card.push(' ');
            }
            credit_card.push_str(&format!("{:04}", rng.below(10_000)));
        }
        let city = US_CITIES[rng.below(US_CITIES.len() as u64) as usize];
        let state = US_STATES[rng.below(US_STATES.len() as u64) as usize];
        let size = 8 + name.len() + email_address.len() + credit_card.len() + city.len() + state.len();
        let extra = self.extra(rng, size, AVG_PERSON_BYTES);
        Person {
            id,
            name,
            email_address,
            credit_card,
            city,
            state,
            date_time: t,
            extra,
        }
    }

    fn auction(&self, n: u64, rng: &mut Rng, t: i64) -> Auction<'_> {
        let id = last_auction(n) as i64 + FIRST_AUCTION_ID;
        let seller = if rng.below(HOT_SELLERS_RATIO) > 0 {
            (last_person(n) / HOT_BLOCK) * HOT_BLOCK
        } else {
            next_person(n, rng)
        } as i64
            + FIRST_PERSON_ID;
        let category = FIRST_CATEGORY_ID + rng.below(NUM_CATEGORIES) as i64;
        let initial_bid = next_price(rng);
        // On average as long as it takes to open the next NUM_IN_FLIGHT_AUCTIONS auctions.
        let ahead = NUM_IN_FLIGHT_AUCTIONS * TOTAL_PROPORTION / AUCTION_PROPORTION;
        let horizon = self.nominal_ms(n + ahead) - t;
        let expires = t + 1 + rng.below(horizon.saturating_mul(2).max(1) as u64) as i64;
        let item_name = next_string(rng, 20, ' ');
        let description = next_string(rng, 100, ' ');
        let reserve = initial_bid + next_price(rng);
        let size = 8 + item_name.len() + description.len() + 40;
        let extra = self.extra(rng, size, AVG_AUCTION_BYTES);
        Auction {
            id,
            item_name,
            description,
            initial_bid,
            reserve,
            date_time: t,
            expires,
            seller,
            category,
            extra,
        }
    }

    fn bid(&self, n: u64, rng: &mut Rng, t: i64) -> Bid<'_> {
        let auction = if rng.below(HOT_AUCTION_RATIO) > 0 {
            (last_auction(n) / HOT_BLOCK) * HOT_BLOCK
        } else {
            let max = last_auction(n);
            let min = max.saturating_sub(NUM_IN_FLIGHT_AUCTIONS);
            min + rng.below(max - min + 1 + AUCTION_ID_LEAD)
        } as i64
            + FIRST_AUCTION_ID;
        let bidder = if rng.below(HOT_BIDDERS_RATIO) > 0 {
            // The second person of the block, so hot bidders are not hot sellers.
            (last_person(n) / HOT_BLOCK) * HOT_BLOCK + 1
        } else {
            next_person(n, rng)
        } as i64
            + FIRST_PERSON_ID;
        let price = next_price(rng);
        let (channel, url) = if rng.below(HOT_CHANNELS_RATIO) > 0 {
            let i = rng.below(HOT_CHANNELS.len() as u64) as usize;
            (HOT_CHANNELS[i], self.hot_urls[i].as_str())
        } else {
            let (c, u) = &self.channels[rng.below(CHANNELS as u64) as usize];
            (c.as_str(), u.as_str())
        };
        let extra = self.extra(rng, 32, AVG_BID_BYTES);
        Bid {
            auction,
            bidder,
            price,
            channel,
            url,
            date_time: t,
            extra,
        }
    }

    /// Padding so that an event of `size` bytes is `average` bytes on average (±20 %).
    fn extra(&self, rng: &mut Rng, size: usize, average: usize) -> &str {
        if size > average {
            return "";
        }
        let want = average - size;
        let delta = (want as f64 * 0.2).round() as usize;
        let len = want - delta
            + if delta == 0 {
                0
            } else {
                rng.below(2 * delta as u64) as usize
            };
        let at = rng.below((self.pool.len() - len) as u64) as usize;
        self.pool.get(at..at + len).unwrap_or_default()
    }

    /// The next up to `max` event numbers of `stream` from `*next` on (advancing it), before the end.
    pub fn numbers(&self, stream: Stream, next: &mut u64, max: usize) -> Vec<u64> {
        let mut out = Vec::with_capacity(max.min(1 << 16));
        while out.len() < max && !self.ended(*next) {
            if Stream::of(*next) == stream {
                out.push(*next);
            }
            *next += 1;
        }
        out
    }

    /// The events numbered `ns` (all of `stream`) as one Arrow batch in the stream's schema.
    pub fn batch(&self, stream: Stream, ns: &[u64]) -> Result<RecordBatch> {
        let n = ns.len();
        let schema = stream.schema();
        let cols: Vec<ArrayRef> = match stream {
            Stream::Person => {
                let mut id = Int64Builder::with_capacity(n);
                let mut strs: Vec<StringBuilder> = (0..5).map(|_| StringBuilder::with_capacity(n, n * 12)).collect();
                let mut time = TimestampMillisecondBuilder::with_capacity(n);
                let mut extra = StringBuilder::with_capacity(n, n * 140);
                for e in ns.iter().map(|k| self.event(*k)) {
                    if let Event::Person(p) = e {
                        id.append_value(p.id);
                        for (b, v) in strs.iter_mut().zip([
                            p.name.as_str(),
                            p.email_address.as_str(),
                            p.credit_card.as_str(),
                            p.city,
                            p.state,
                        ]) {
                            b.append_value(v);
                        }
                        time.append_value(p.date_time);
                        extra.append_value(p.extra);
                    }
                }
                let mut cols: Vec<ArrayRef> = vec![Arc::new(id.finish())];
                cols.extend(strs.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
                cols.push(Arc::new(time.finish()));
                cols.push(Arc::new(extra.finish()));
                cols
            }
            Stream::Auction => {
                let mut ints: Vec<Int64Builder> = (0..5).map(|_| Int64Builder::with_capacity(n)).collect();
                let mut name = StringBuilder::with_capacity(n, n * 12);
                let mut desc = StringBuilder::with_capacity(n, n * 50);
                let mut time = TimestampMillisecondBuilder::with_capacity(n);
                let mut expires = TimestampMillisecondBuilder::with_capacity(n);
                let mut extra = StringBuilder::with_capacity(n, n * 400);
                for e in ns.iter().map(|k| self.event(*k)) {
                    if let Event::Auction(a) = e {
                        for (b, v) in ints
                            .iter_mut()
                            .zip([a.id, a.initial_bid, a.reserve, a.seller, a.category])
                        {
                            b.append_value(v);
                        }
                        name.append_value(&a.item_name);
                        desc.append_value(&a.description);
                        time.append_value(a.date_time);
                        expires.append_value(a.expires);
                        extra.append_value(a.extra);
                    }
                }
                let [id, initial, reserve, seller, category] = &mut ints[..] else {
                    return Err(Error::Internal("auction columns".into()));
                };
                vec![
                    Arc::new(id.finish()),
                    Arc::new(name.finish()),
                    Arc::new(desc.finish()),
                    Arc::new(initial.finish()),
                    Arc::new(reserve.finish()),
                    Arc::new(time.finish()),
                    Arc::new(expires.finish()),
                    Arc::new(seller.finish()),
                    Arc::new(category.finish()),
                    Arc::new(extra.finish()),
                ]
            }
            Stream::Bid => {
                let mut auction = Int64Builder::with_capacity(n);
                let mut bidder = Int64Builder::with_capacity(n);
                let mut price = Int64Builder::with_capacity(n);
                let mut channel = StringBuilder::with_capacity(n, n * 10);
                let mut url = StringBuilder::with_capacity(n, n * 80);
                let mut time = TimestampMillisecondBuilder::with_capacity(n);
                let mut extra = StringBuilder::with_capacity(n, n * 70);
                for e in ns.iter().map(|k| self.event(*k)) {
                    if let Event::Bid(b) = e {
                        auction.append_value(b.auction);
                        bidder.append_value(b.bidder);
                        price.append_value(b.price);
                        channel.append_value(b.channel);
                        url.append_value(b.url);
                        time.append_value(b.date_time);
                        extra.append_value(b.extra);
                    }
                }
                vec![
                    Arc::new(auction.finish()),
                    Arc::new(bidder.finish()),
                    Arc::new(price.finish()),
                    Arc::new(channel.finish()),
                    Arc::new(url.finish()),
                    Arc::new(time.finish()),
                    Arc::new(extra.finish()),
                ]
            }
        };
        Ok(RecordBatch::try_new(schema, cols)?)
    }

    /// Every event of `stream` as batches of up to `batch_rows` rows (bounded options only).
    pub fn all_batches(&self, stream: Stream, batch_rows: usize) -> Result<Vec<RecordBatch>> {
        if self.opts.events.is_none() {
            return Err(Error::plan("nexmark: all_batches needs a bounded number of events"));
        }
        let mut next = 0;
        let mut out = Vec::new();
        loop {
            let ns = self.numbers(stream, &mut next, batch_rows.max(1));
            if ns.is_empty() {
                return Ok(out);
            }
            out.push(self.batch(stream, &ns)?);
        }
    }
}

/// The newest person id (base 0) at event `n`: `n`'s own when it is a person.
fn last_person(n: u64) -> u64 {
    let epoch = n / TOTAL_PROPORTION;
    let mut offset = n % TOTAL_PROPORTION;
    if offset >= PERSON_PROPORTION {
        // An auction or a bid: the last person of this epoch.
        offset = PERSON_PROPORTION - 1;
    }
    epoch * PERSON_PROPORTION + offset
}

/// The newest auction id (base 0) at event `n`: `n`'s own when it is an auction. (Before the first
/// auction this is 0 too, the id the first one gets.)
fn last_auction(n: u64) -> u64 {
    let mut epoch = n / TOTAL_PROPORTION;
    let mut offset = n % TOTAL_PROPORTION;
    if offset < PERSON_PROPORTION {
        if epoch == 0 {
            return 0;
        }
        epoch -= 1;
        offset = AUCTION_PROPORTION - 1;
    } else if offset >= PERSON_PROPORTION + AUCTION_PROPORTION {
        offset = AUCTION_PROPORTION - 1;
    } else {
        offset -= PERSON_PROPORTION;
    }
    epoch * AUCTION_PROPORTION + offset
}

/// One of the active people (the newest `NUM_ACTIVE_PEOPLE`), or a few not registered yet.
fn next_person(n: u64, rng: &mut Rng) -> u64 {
    let people = last_person(n) + 1;
    let active = people.min(NUM_ACTIVE_PEOPLE);
    people - active + rng.below(active + PERSON_ID_LEAD)
}

/// Log-uniform from 100 to 100 000 000 (cents: one dollar to a million).
fn next_price(rng: &mut Rng) -> i64 {
    (pow10(rng.next_f64() * 6.0) * 100.0).round() as i64
}

/// 3 to `max_len - 1` letters, about one in 13 replaced by `special`, trimmed of spaces.
fn next_string(rng: &mut Rng, max_len: u64, special: char) -> String {
    let len = 3 + rng.below(max_len - 3);
    let mut s = String::with_capacity(len as usize);
    for _ in 0..len {
        if rng.below(13) == 0 {
            s.push(special);
        } else {
            s.push((b'a' + rng.below(26) as u8) as char);
        }
    }
    let t = s.trim_matches(' ');
    if t.len() == s.len() { s } else { t.to_string() }
}

fn base_url(rng: &mut Rng) -> String {
    format!(
        "https://www.nexmark.com/{}/{}/{}/item.htm?query=1",
        next_string(rng, 5, '_'),
        next_string(rng, 5, '_'),
        next_string(rng, 5, '_')
    )
}

/// `connector = 'generator', kind = 'nexmark'`: one of the three streams, as fast as it is read.
pub struct NexmarkSource {
    generator: Nexmark,
    stream: Stream,
    next: u64,
    schema: SchemaRef,
}

impl NexmarkSource {
    pub fn new(opts: NexmarkOptions, stream: Stream, schema: SchemaRef) -> NexmarkSource {
        NexmarkSource {
            generator: Nexmark::new(opts),
            stream,
            next: 0,
            schema,
        }
    }
}

impl super::Source for NexmarkSource {
    fn poll(&mut self, max: usize) -> Result<super::Poll> {
        let ns = self.generator.numbers(self.stream, &mut self.next, max.max(1));
        if ns.is_empty() {
            return Ok(super::Poll::Exhausted);
        }
        let batch = self.generator.batch(self.stream, &ns)?;
        Ok(super::Poll::Ready(Some(super::conform(&batch, &self.schema)?), vec![]))
    }

    fn bounded(&self) -> bool {
        self.generator.opts.events.is_some()
    }

    /// The next event number: every event is a pure function of its number.
    fn position(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "next": self.next }))
    }

    fn seek(&mut self, position: &serde_json::Value) -> Result<()> {
        self.next = position
            .get("next")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| crate::error::Error::External(format!("nexmark source position {position}: no 'next'")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array};

    fn generated(events: u64, seed: u64, out_of_order_ms: u64) -> Nexmark {
        Nexmark::new(NexmarkOptions {
            seed,
            events: Some(events),
            rate: DEFAULT_RATE,
            out_of_order_ms,
        })
    }

    fn json(g: &Nexmark, events: u64) -> String {
        let mut s = String::new();
        for n in 0..events {
            g.event(n).write_json(&mut s);
        }
        s
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let a = json(&generated(5000, 7, 0), 5000);
        assert_eq!(a, json(&generated(5000, 7, 0), 5000));
        assert_ne!(a, json(&generated(5000, 8, 0), 5000));
    }

    #[test]
    fn proportions_ids_and_times_follow_the_event_number() {
        let g = generated(50_000, 1, 0);
        let (mut persons, mut auctions, mut bids) = (Vec::new(), Vec::new(), Vec::new());
        for n in 0..50_000 {
            match g.event(n) {
                Event::Person(p) => persons.push(p.id),
                Event::Auction(a) => auctions.push(a.id),
                Event::Bid(b) => bids.push(b),
            }
            assert_eq!(g.time_ms(n), EPOCH_2026_MS + (n / 10) as i64, "10 000 events/s");
        }
        assert_eq!((persons.len(), auctions.len(), bids.len()), (1000, 3000, 46_000));
        assert!(persons.iter().copied().eq(1000..2000), "person ids are consecutive");
        assert!(auctions.iter().copied().eq(1000..4000), "auction ids are consecutive");
        let hot = bids
            .iter()
            .filter(|b| (b.auction - FIRST_AUCTION_ID) % 100 == 0)
            .count();
        assert!(hot > bids.len() / 2, "hot auctions get over half the bids: {hot}");
        let hot_bidders = bids.iter().filter(|b| (b.bidder - FIRST_PERSON_ID) % 100 == 1).count();
        assert!(hot_bidders > bids.len() * 7 / 10, "hot bidders: {hot_bidders}");
        for b in &bids {
            assert!((100..=100_000_000).contains(&b.price), "price {}", b.price);
            assert!(b.url.starts_with("https://www.nexmark.com/"), "{}", b.url);
            assert!(b.extra.len() >= 54 && b.extra.len() <= 82, "extra {}", b.extra.len());
        }
        let hot_channels = bids.iter().filter(|b| HOT_CHANNELS.contains(&b.channel)).count();
        assert!((20_000..26_000).contains(&hot_channels), "hot channels: {hot_channels}");
    }

    #[test]
    fn auctions_expire_after_they_open_and_bids_name_recent_auctions() {
        let g = generated(20_000, 3, 2000);
        for n in 0..20_000 {
            match g.event(n) {
                Event::Auction(a) => {
                    assert!(a.expires > a.date_time);
                    assert!(a.reserve > a.initial_bid);
                    assert!((10..15).contains(&a.category));
                    assert!(a.seller >= FIRST_PERSON_ID && a.seller <= last_person(n) as i64 + FIRST_PERSON_ID + 10);
                }
                Event::Bid(b) => {
                    let newest = last_auction(n) as i64 + FIRST_AUCTION_ID;
                    assert!(
                        b.auction <= newest + 10 && b.auction >= newest - 100 - 99,
                        "{}",
                        b.auction
                    );
                }
                Event::Person(_) => {}
            }
        }
    }

    #[test]
    fn disorder_stays_within_its_bound() {
        let g = generated(30_000, 5, 1500);
        let mut max = i64::MIN;
        let mut behind = 0;
        for n in 0..30_000 {
            let t = g.time_ms(n);
            assert!(t >= g.nominal_ms(n) - 1500 && t <= g.nominal_ms(n));
            if t < max {
                behind += 1;
            }
            assert!(t >= max.saturating_sub(1500), "disorder beyond the bound");
            max = max.max(t);
        }
        assert!(behind > 10_000, "events out of order: {behind}");
    }

    #[test]
    fn one_stream_alone_is_that_stream_of_the_whole_sequence() {
        let g = generated(10_000, 11, 500);
        let bids = g.all_batches(Stream::Bid, 777).expect("bids");
        let rows: usize = bids.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 9200);
        let first = bids[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("auction");
        let mut want = Vec::new();
        for n in 0..60 {
            if let Event::Bid(b) = g.event(n) {
                want.push(b.auction);
            }
        }
        assert_eq!(
            first
                .iter()
                .take(want.len())
                .map(|v| v.unwrap_or(-1))
                .collect::<Vec<_>>(),
            want
        );
        for s in Stream::ALL {
            for b in g.all_batches(s, 1000).expect("batches") {
                assert_eq!(b.schema(), s.schema());
                assert_eq!(b.column(0).null_count(), 0);
            }
        }
        let persons: usize = g
            .all_batches(Stream::Person, 64)
            .expect("p")
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(persons, 200);
    }

    #[test]
    fn json_lines_parse_with_the_stream_columns() {
        let g = generated(100, 2, 0);
        for n in [0, 1, 4] {
            let e = g.event(n);
            let mut s = String::new();
            e.write_json(&mut s);
            let v: serde_json::Value = serde_json::from_str(&s).expect("valid json");
            let obj = v.as_object().expect("object");
            let schema = e.stream().schema();
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            assert_eq!(
                obj.keys()
                    .map(String::as_str)
                    .collect::<std::collections::BTreeSet<_>>(),
                names.into_iter().collect()
            );
            assert_eq!(v["date_time"], "2026-01-01T00:00:00.000Z");
        }
        let mut s = String::new();
        g.event(0).write_json(&mut s);
        assert!(s.starts_with("{\"id\":1000,\"name\":\""), "{s}");
    }

    #[test]
    fn pow10_is_close_to_powf() {
        for i in 0..=600 {
            let x = i as f64 / 100.0;
            let (a, b) = (pow10(x), 10f64.powf(x));
            assert!(((a - b) / b).abs() < 1e-13, "10^{x}: {a} vs {b}");
        }
    }
}
