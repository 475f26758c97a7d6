//! Build logs: persisted with sequence numbers, fanned out on a `LogBus`, streamed
//! over SSE (the logs issue fills this in).
