//! SMTP protocol code (being written).
