//! The HBase sink through the Thrift2 gateway (`protocol = 'thrift2'`), against the real HBase
//! `scripts/services start` runs (Thrift1 on 9090, Thrift2 on 9095; under `CI=true` a missing one
//! fails these tests): the same stories as `hbase_idempotent` leave byte-identical cells (values
//! and timestamps, every version) through either gateway, with every `durability`, and a query
//! writes the same table through both.

use std::collections::BTreeMap;

use freshet::connector::hbase::{self, GENERATION_ROW};
use hbase_thrift::hbase::THbaseSyncClient;

use crate::hbase_idempotent::{
    Extra, THRIFT, create_table, recovery_publishes_a_checkpoint, replay_after_a_crash, row_key,
};
use crate::support::*;

const THRIFT2: &str = "127.0.0.1:9095";

fn both_up() -> bool {
    service_up("HBase Thrift", THRIFT) && service_up("HBase Thrift2", THRIFT2)
}

fn thrift2(durability: &str) -> [(&str, &str); 3] {
    [("protocol", "thrift2"), ("thrift", THRIFT2), ("durability", durability)]
}

/// Every version (up to 10) of the cells `v:window_end`, `v:a`, `v:b` of rows `keys` and of the
/// sink's generation row, as `row column @timestamp = value`.
fn versions_of(table: &str, keys: &[i64]) -> Vec<String> {
    let mut c = hbase::connect(THRIFT).expect("connect");
    let mut cells: Vec<(String, Vec<u8>, &str)> = keys
        .iter()
        .flat_map(|k| ["window_end", "a", "b"].map(|col| (k.to_string(), row_key(*k), col)))
        .collect();
    cells.push(("generation row".into(), GENERATION_ROW.to_vec(), "generation"));
    let mut out = Vec::new();
    for (name, key, col) in cells {
        let got = c
            .get_ver(
                table.as_bytes().to_vec(),
                key,
                format!("v:{col}").into_bytes(),
                10,
                BTreeMap::new(),
            )
            .expect("getVer");
        for cell in got {
            out.push(format!(
                "{name} {col} @{} = {}",
                cell.timestamp.unwrap_or_default(),
                String::from_utf8_lossy(&cell.value.unwrap_or_default())
            ));
        }
    }
    out
}

/// The stories of `hbase_idempotent` through both gateways, on a table each.
fn same_cells_through_both(story: fn(&str, Extra), keys: &[i64], durability: &str) {
    let (one, two) = (unique("hb_t1"), unique("hb_t2"));
    create_table(&one);
    create_table(&two);
    story(&one, &[]);
    story(&two, &thrift2(durability));
    let (a, b) = (versions_of(&one, keys), versions_of(&two, keys));
    assert!(a.len() > keys.len(), "the story wrote cells: {a:?}");
    assert!(
        a.iter().any(|c| c.starts_with("generation row")),
        "the story published deletes: {a:?}"
    );
    assert_eq!(a, b, "every version of every cell, Thrift1 then Thrift2");
}

#[test]
fn a_replay_after_a_crash_through_thrift2_leaves_the_cells_thrift1_leaves() {
    if !both_up() {
        return;
    }
    same_cells_through_both(replay_after_a_crash, &[1, 2, 3, 4, 5], "default");
}

#[test]
fn recovery_through_thrift2_publishes_the_deletes_thrift1_publishes_with_every_durability() {
    if !both_up() {
        return;
    }
    for d in ["default", "skip_wal", "async_wal", "sync_wal", "fsync_wal"] {
        same_cells_through_both(recovery_publishes_a_checkpoint, &[1, 2], d);
    }
}

/// Every cell of `table` (newest versions) as `row(hex) column @timestamp = value`, in row order.
fn scan(table: &str) -> Vec<String> {
    let mut out = Vec::new();
    hbase::scan(&mut hbase::connect(THRIFT).expect("connect"), table, |r| {
        let row: String = r.row.unwrap_or_default().iter().map(|b| format!("{b:02x}")).collect();
        for (col, cell) in r.columns.unwrap_or_default() {
            out.push(format!(
                "{row} {} @{} = {}",
                String::from_utf8_lossy(&col),
                cell.timestamp.unwrap_or_default(),
                String::from_utf8_lossy(&cell.value.unwrap_or_default())
            ));
        }
        Ok(())
    })
    .expect("scan");
    out
}

const ODD_SQL: &str = "SELECT course_id, window_start, window_end, COUNT(*) AS views,
       CASE WHEN COUNT(*) % 2 = 0 THEN NULL ELSE COUNT(*) END AS odd
FROM TUMBLE(ev, event_time, INTERVAL '10' SECOND) GROUP BY course_id, window_start, window_end";

const ODD_ORACLE: &str = "SELECT course_id, date_bin(INTERVAL '10 seconds', event_time, TIMESTAMP '1970-01-01'),
       COUNT(*), CASE WHEN COUNT(*) % 2 = 0 THEN NULL ELSE COUNT(*) END FROM ev GROUP BY 1, 2";

#[tokio::test]
async fn a_query_writes_the_same_table_through_thrift2_as_through_thrift1() {
    if !both_up() {
        return;
    }
    for batch_size in [500, 20_000] {
        same_table_through_both(
            batch_size,
            "course_id, window_start",
            "course_id BIGINT, window_start TIMESTAMP, views BIGINT, odd BIGINT",
            ODD_SQL,
            ODD_ORACLE,
        )
        .await;
    }
}

/// Sessions per user: every row has a cell timestamp of its own (its `window_end`), so Thrift2
/// calls carry many timestamps each (Thrift1 makes a call per timestamp), and sessions that merge
/// retract their earlier rows (deletes noted and published at checkpoints).
const SESSION_SQL: &str = "SELECT user_id, window_start, window_end, COUNT(*) AS views,
       CASE WHEN COUNT(*) % 2 = 0 THEN NULL ELSE COUNT(*) END AS odd
FROM SESSION(ev, event_time, INTERVAL '30' SECOND) GROUP BY user_id, window_start, window_end";

/// The same sessions in batch SQL: a new session where the gap to the user's previous event is
/// over 30 s (windows that touch merge).
const SESSION_ORACLE: &str = "
WITH e AS (SELECT user_id, event_time,
                  CAST(arrow_cast(event_time, 'Timestamp(Millisecond, None)') AS BIGINT) AS t FROM ev),
m AS (SELECT *, CASE WHEN t - LAG(t) OVER (PARTITION BY user_id ORDER BY t) <= 30000 THEN 0 ELSE 1 END AS nv
      FROM e),
n AS (SELECT *, SUM(nv) OVER (PARTITION BY user_id ORDER BY t ROWS UNBOUNDED PRECEDING) AS s FROM m)
SELECT user_id, MIN(event_time), COUNT(*), CASE WHEN COUNT(*) % 2 = 0 THEN NULL ELSE COUNT(*) END
FROM n GROUP BY user_id, s";

#[tokio::test]
async fn session_rows_each_at_their_own_timestamp_land_the_same_through_thrift2_as_through_thrift1() {
    if !both_up() {
        return;
    }
    for batch_size in [500, 20_000] {
        same_table_through_both(
            batch_size,
            "user_id, window_start",
            "user_id BIGINT, window_start TIMESTAMP, views BIGINT, odd BIGINT",
            SESSION_SQL,
            SESSION_ORACLE,
        )
        .await;
    }
}

/// `sql` (over 20 000 generated events `ev`, in micro-batches of `batch_size`) into one table through
/// each gateway, checkpointing: both tables hold the batch answer `oracle` (read back as `columns`
/// keyed by `row_key`) and the very same cells at the same timestamps.
async fn same_table_through_both(batch_size: usize, row_key: &str, columns: &str, sql: &str, oracle: &str) {
    let (one, two) = (unique("hq_t1"), unique("hq_t2"));
    let opts = gen_opts(20_000, 13);
    let mut s = session(batch_size);
    exec(
        &mut s,
        &format!(
            "CREATE SOURCE ev ({COURSE_COLUMNS}) WITH (connector = 'generator', seed = '13', events = '20000');
             CREATE SINK h1 WITH (connector = 'hbase', table = '{one}', row_key = '{row_key}',
               create_table = 'true') AS {sql};
             CREATE SINK h2 WITH (connector = 'hbase', protocol = 'thrift2', table = '{two}',
               row_key = '{row_key}', create_table = 'true', durability = 'sync_wal') AS {sql};"
        ),
    )
    .await;
    finish_within(&mut s, std::time::Duration::from_secs(300)).await;
    for q in &s.queries {
        assert!(matches!(q.outcome, Some(Ok(_))), "{}: {:?}", q.name, q.outcome);
    }
    // The values: what the batch query computes (an even count is no `odd` cell).
    let want = batch_rows(&oracle_ctx(&opts, "ev"), oracle).await;
    assert!(
        want.iter().any(|r| r.ends_with("|NULL")),
        "some counts are even: {want:?}"
    );
    for table in [&one, &two] {
        let name = unique("read");
        exec(
            &mut s,
            &format!(
                "CREATE TABLE {name} ({columns})
                 WITH (connector = 'hbase', table = '{table}', row_key = '{row_key}');"
            ),
        )
        .await;
        let got = sorted_rows(&exec(&mut s, &format!("SELECT * FROM {name};")).await);
        assert_rows_eq(&got, &want, &format!("table {table} holds the batch result"));
    }
    // The cells: the same bytes at the same timestamps.
    let (a, b) = (scan(&one), scan(&two));
    assert!(!a.is_empty());
    assert_eq!(a, b, "every cell, Thrift1 then Thrift2");
}
