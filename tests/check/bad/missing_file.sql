-- expect: 3:34: no/such/file.csv: No such file
CREATE TABLE t (a BIGINT)
WITH (connector = 'file', path = 'no/such/file.csv', format = 'csv');
