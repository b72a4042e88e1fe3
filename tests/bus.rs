//! The bus worker over real PTYs and TCP: faults, several devices on one bus, unplug and replug, port busy.
