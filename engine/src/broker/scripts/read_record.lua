-- read_record.lua: a task record's fields, whatever its type (record.lua: a HASH while the
-- task lives, a MessagePack STRING once final). The one reader of records for clients.
--
-- KEYS[1]  task record
-- Returns  its fields as a flat { name, value, ... } list; empty when there is no record
return (record_all(KEYS[1]))
