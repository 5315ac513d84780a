"""Pure agent logic: device model, batch buffer, backoff. No I/O, no clocks, no asyncio."""
