"""Everything around the DSP on the board: config, sources, MQTT, telemetry, service, CLI."""
