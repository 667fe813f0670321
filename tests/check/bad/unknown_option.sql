-- expect: 4:47: option 'speed': unknown option for connector 'generator'
CREATE SOURCE ev (user_id BIGINT, event_time TIMESTAMP,
    WATERMARK FOR event_time AS event_time)
WITH (connector = 'generator', events = '10', speed = 'fast');
