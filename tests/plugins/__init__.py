"""Test plugins: packages a third party would write, installed by the tests through entry points."""
