"""Tests of the reference service (dealership): its API, OpenAPI document, requests, seed data and routing."""
