// Readiness probe for the local HBase that scripts/services starts.
//
// Talks to the HBase Thrift1 server the way Freshet's HBase sink does (buffered transport, binary
// protocol): creates table __freshet_ready (family "f") if it is missing, writes one row and reads it
// back; given a Thrift2 port as well, writes and reads a row through the Thrift2 server too. Exit 0
// when every value read equals the value written; exit 1 with one line on stderr otherwise.
// One attempt per run: scripts/services calls it in a loop until its deadline.
//
// Compiled by scripts/services against the HBase lib dir:
//   javac -cp 'LIB/*' -d PROBE_DIR HBaseReady.java
//   java -cp 'PROBE_DIR:LIB/*' HBaseReady HOST PORT [TIMEOUT_MS [THRIFT2_PORT]]

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.Collections;
import java.util.List;
import java.util.Map;

import org.apache.hadoop.hbase.thrift.generated.AlreadyExists;
import org.apache.hadoop.hbase.thrift.generated.ColumnDescriptor;
import org.apache.hadoop.hbase.thrift.generated.Hbase;
import org.apache.hadoop.hbase.thrift.generated.IOError;
import org.apache.hadoop.hbase.thrift.generated.Mutation;
import org.apache.hadoop.hbase.thrift.generated.TCell;
import org.apache.hadoop.hbase.thrift.generated.TRowResult;
import org.apache.hadoop.hbase.thrift2.generated.THBaseService;
import org.apache.hadoop.hbase.thrift2.generated.TColumnValue;
import org.apache.hadoop.hbase.thrift2.generated.TGet;
import org.apache.hadoop.hbase.thrift2.generated.TIOError;
import org.apache.hadoop.hbase.thrift2.generated.TPut;
import org.apache.hadoop.hbase.thrift2.generated.TResult;
import org.apache.thrift.TConfiguration;
import org.apache.thrift.protocol.TBinaryProtocol;
import org.apache.thrift.transport.TSocket;

public final class HBaseReady {
  private static ByteBuffer bytes(String s) {
    return ByteBuffer.wrap(s.getBytes(StandardCharsets.UTF_8));
  }

  private static String str(byte[] b) {
    return new String(b, StandardCharsets.UTF_8);
  }

  public static void main(String[] args) {
    String host = args.length > 0 ? args[0] : "127.0.0.1";
    int port = args.length > 1 ? Integer.parseInt(args[1]) : 9090;
    int timeoutMs = args.length > 2 ? Integer.parseInt(args[2]) : 20000;
    int thrift2Port = args.length > 3 ? Integer.parseInt(args[3]) : -1;
    String table = "__freshet_ready";
    String value = "ready-" + System.currentTimeMillis();
    TSocket socket = null;
    try {
      socket = new TSocket(new TConfiguration(), host, port, timeoutMs);
      socket.open();
      Hbase.Client client = new Hbase.Client(new TBinaryProtocol(socket));

      boolean exists = false;
      for (ByteBuffer name : client.getTableNames()) {
        byte[] b = new byte[name.remaining()];
        name.duplicate().get(b);
        if (table.equals(str(b))) {
          exists = true;
          break;
        }
      }
      if (!exists) {
        ColumnDescriptor cf = new ColumnDescriptor();
        cf.setName(bytes("f:"));
        cf.setMaxVersions(1);
        try {
          client.createTable(bytes(table), Collections.singletonList(cf));
        } catch (AlreadyExists e) {
          // created concurrently or by an earlier attempt whose reply was lost: fine
        }
      }

      Map<ByteBuffer, ByteBuffer> noAttrs = Collections.emptyMap();
      Mutation put = new Mutation(false, bytes("f:v"), bytes(value), true);
      client.mutateRow(bytes(table), bytes("probe"), Collections.singletonList(put), noAttrs);

      List<TRowResult> rows = client.getRow(bytes(table), bytes("probe"), noAttrs);
      if (rows.isEmpty()) {
        fail("row written through Thrift was not read back");
      }
      TCell cell = rows.get(0).getColumns().get(bytes("f:v"));
      String got = cell == null ? null : str(cell.getValue());
      if (!value.equals(got)) {
        fail("read back " + got + ", wrote " + value);
      }
      System.out.println("hbase thrift " + host + ":" + port + ": table " + table + " written and read");
      if (thrift2Port > 0) {
        thrift2(host, thrift2Port, timeoutMs, table, value);
      }
    } catch (IOError e) {
      fail("HBase error: " + firstLine(e.getMessage()));
    } catch (TIOError e) {
      fail("HBase error: " + firstLine(e.getMessage()));
    } catch (Exception e) {
      fail(e.getClass().getSimpleName() + ": " + firstLine(String.valueOf(e.getMessage())));
    } finally {
      if (socket != null) {
        socket.close();
      }
    }
  }

  /** Through the Thrift2 server: put a cell of the table the Thrift1 probe made and get it back. */
  private static void thrift2(String host, int port, int timeoutMs, String table, String value)
      throws Exception {
    TSocket socket = new TSocket(new TConfiguration(), host, port, timeoutMs);
    try {
      socket.open();
      THBaseService.Client client = new THBaseService.Client(new TBinaryProtocol(socket));
      TColumnValue cell = new TColumnValue(bytes("f"), bytes("v2"), bytes(value));
      client.put(bytes(table), new TPut(bytes("probe2"), Collections.singletonList(cell)));
      TResult got = client.get(bytes(table), new TGet(bytes("probe2")));
      List<TColumnValue> cells = got.getColumnValues();
      String read = cells == null || cells.isEmpty() ? null : str(cells.get(0).getValue());
      if (!value.equals(read)) {
        fail("through thrift2 read back " + read + ", wrote " + value);
      }
      System.out.println("hbase thrift2 " + host + ":" + port + ": table " + table + " written and read");
    } finally {
      socket.close();
    }
  }

  private static String firstLine(String s) {
    if (s == null) {
      return "";
    }
    int nl = s.indexOf('\n');
    return nl < 0 ? s : s.substring(0, nl);
  }

  private static void fail(String msg) {
    System.err.println("not ready: " + msg);
    System.exit(1);
  }
}
