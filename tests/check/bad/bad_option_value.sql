-- expect: 3:59: option 'events': cannot parse 'lots'
CREATE SOURCE ev (user_id BIGINT, event_time TIMESTAMP)
WITH (connector = 'generator', kind = 'courses', events = 'lots');
